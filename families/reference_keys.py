"""Reference images whose keys and values a cache supplies (ComfyUI's FluxKVCache, newer hosts).

Flux.2 edits (the official klein KV template) and Qwen-Image edits may run under FluxKVCache: at
the run's first model call an attn1 patch keeps each block's reference-image keys and values,
and every later call drops the reference tokens from the sequence and appends the kept keys and
values instead. Such a call's q covers [text; image], its k and v [text; image; reference].

The paper's control acts on the square logit matrix over all tokens, and the skew part of a row
reads every column's query as well as its key, M_skew[i, j] = (q_i·k_j - q_j·k_i) / 2: the
references' queries, which these calls no longer carry. Before, the hook took such a call for a
cross-attention and handed it on: from the second step on, the run was not steered, and nothing
said so. Now the queries come from the call the host kept its keys from (that first, full call,
after RoPE, whose positions the cache keeps), the square call is steered (or probed) as it
would be without the cache, and the host gets back the rows it asked for. The reference tokens'
own rows are computed with it, the work the cache saves; each block keeps as many queries as
the host keeps keys.

They are kept in a store among the model's patches, which the host clears with its own cache
when a run ends (``cleanup``: ComfyUI calls it on every patch since the releases that brought
the cache). Hosts that never call it get no store: a cached call there stops sampling with a
message, as it does wherever its references' queries were not seen.
"""

from __future__ import annotations

import torch

from .dit_blocks import running_block

REFERENCE_TOKENS_KEY = "reference_image_num_tokens"  # the host's, in the call's options
STORE_NAME = "hopfield_circulation_reference_queries"  # our patch name among the model's


class ReferenceQueries:
    """Each block's reference-token queries [B, H, R, d] from the call its keys were cached
    from, until the run ends (a patch object, deep-copied or shared with the model's options
    like the host's cache)."""

    def __init__(self):
        self.by_block: dict[tuple[str, int], torch.Tensor] = {}

    def cleanup(self) -> None:  # ComfyUI: the run ended, as for the host's cache
        self.by_block = {}


def install(model_patcher) -> None:
    """Give the model a store, once per lineage, on hosts that clear patches after a run."""
    from comfy.model_patcher import ModelPatcher

    if not hasattr(ModelPatcher, "model_patches_call_function"):
        return  # an older host: no reference key cache, and nothing would clear the store
    patches = model_patcher.model_options.get("transformer_options", {}).get("patches", {})
    if not patches.get(STORE_NAME):
        model_patcher.set_model_patch(ReferenceQueries(), STORE_NAME)


def reference_tokens(options: dict) -> int:
    """How many reference-image tokens the call's sequence ends with, cached or not."""
    counts = options.get(REFERENCE_TOKENS_KEY)
    return int(sum(counts)) if counts else 0


def _store(options: dict) -> ReferenceQueries | None:
    stores = (options.get("patches") or {}).get(STORE_NAME)
    return stores[0] if stores else None


def remember(options: dict, q: torch.Tensor, count: int) -> None:
    """Keep the last ``count`` queries of a full call ([B, H, L, d]) for its block, where an
    attn1 patch (the only kind that can swap keys) may cache their keys."""
    patches = options.get("patches") or {}
    store = _store(options)
    block = running_block(options)
    if store is None or block is None or not patches.get("attn1_patch"):
        return
    store.by_block[tuple(block)] = q[:, :, q.shape[2] - count:].clone()


def with_cached_queries(options: dict, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """The call's queries with its cached references' appended ([B, H, L_k, d]), for a call
    whose keys ([B, H, L_k, d]) end with the references its queries lack; None for any other
    call with fewer queries than keys (a cross-attention of another pack's). Raises where the
    references' queries were never seen."""
    count = reference_tokens(options)
    if count == 0 or k.shape[2] - q.shape[2] != count:
        return None
    block = running_block(options)
    store = _store(options)
    kept = None if store is None or block is None else store.by_block.get(tuple(block))
    if kept is None or kept.shape[2] != count:
        raise RuntimeError(
            f"Hopfield Circulation: block {block} attends to {count} reference-image tokens "
            "whose keys and values a cache (FluxKVCache) supplies, but this pack did not see "
            "their queries in the call the cache was filled from, and the skew part of the "
            "logits needs them. Update ComfyUI, or take FluxKVCache off this model (it only "
            "saves time).")
    if kept.shape[0] != q.shape[0]:  # as the host repeats its cached keys to the batch
        from comfy.utils import repeat_to_batch_size

        kept = repeat_to_batch_size(kept, q.shape[0])
    return torch.cat((q, kept.to(q.dtype)), dim=2)
