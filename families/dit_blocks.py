"""What the Flux-style DiT adapters (Flux, Chroma, Qwen-Image) share: a layer map over their
blocks in forward order, the `dit` replace patches that tell attention which block is running,
and the placement of a joint [text; image; reference] sequence on the image-token grid.

ComfyUI 0.3.64 passes these models' attention no block index, so a chained ``dit``
``double_block``/``single_block`` replace publishes ("double" | "single", i) in a copy of the
block's transformer_options (as ``mmdit.py`` does for SD3). Newer hosts set ``block_type`` and
``block_index`` themselves; they are read when our key is absent.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..hook.layers import LayerId, LayerMap
from ..vocabulary import LayerKind
from .base import Placement, patch_grid

GROUPS = ("early", "middle", "late")
BLOCK_KEY = "hopfield_circulation_dit_block"  # ("double" | "single", i) of the running block
TEXT_KEY = "hopfield_circulation_text_tokens"  # context tokens at the head of the sequence
BLOCK_KINDS: dict[str, LayerKind] = {"double": "joint", "single": "single"}


def third_of(index: int, total: int) -> str:
    """The group ("early", "middle", "late") of layer ``index`` among ``total`` in forward
    order."""
    return GROUPS[min(3 * index // max(total, 1), 2)]


def dit_layer_map(family: str, label: str, counts: dict[str, int], aliases: bool) -> LayerMap:
    """Layers numbered over all blocks in forward order (``counts``: block type -> how many,
    in order), grouped into thirds of that order; ``aliases`` lets a `layers` setting name
    each block type ("double", "single")."""
    total = sum(counts.values())
    layers, by_key, names, index = [], {}, {}, 0
    for block_type, count in counts.items():
        for i in range(count):
            layer = LayerId(family, index, third_of(index, total), BLOCK_KINDS[block_type])
            layers.append(layer)
            by_key[(block_type, i)] = layer
            index += 1
        names[block_type] = frozenset(range(index - count, index))
    spans = ", then ".join(f"the {t} blocks {min(s)}-{max(s)}" for t, s in names.items() if s)
    if not aliases:
        spans = f"the transformer blocks 0-{total - 1}"
    note_blocks = " (double blocks, then single)" if aliases else ""
    return LayerMap(
        family, tuple(layers), by_key, GROUPS, last_index=total - 1,
        index_hint=f"{label} layers are {spans}; groups with no block on a shallow model "
        "select nothing",
        report_note=f"{label}: align_down, align_mid and align_up carry the early, middle and "
        f"late thirds of all blocks in forward order{note_blocks}.",
        aliases=names if aliases else {},
    )


def self_attention_layer_map(family: str, label: str, depth: int, blocks: str) -> LayerMap:
    """Layers 0..depth-1 keyed (i,), one self-attention over the image's tokens per block (a
    cross-attention to the text beside it is no layer), in thirds; ``blocks`` names them in
    messages ("blocks", "visual blocks")."""
    layers, by_key = [], {}
    for i in range(depth):
        layer = LayerId(family, i, third_of(i, depth), "self")
        layers.append(layer)
        by_key[(i,)] = layer
    return LayerMap(
        family, tuple(layers), by_key, GROUPS, last_index=depth - 1,
        index_hint=f"{label} layers are the {blocks} 0-{depth - 1}; groups with no block on a "
        "shallow model select nothing",
        report_note=f"{label}: align_down, align_mid and align_up carry the early, middle and "
        f"late thirds of the {blocks}.",
    )


def _publishing_patch(block_type: str, index: int, previous):
    """A dit replace that tells attention which block runs, then runs it as before."""

    def publish_dit_block(args, extra, **kwargs):
        options = args.get("transformer_options")
        # A pack's copy of the model's loop (a step cache's) may pass no options: its blocks
        # then call attention without the model's patches, which intact.py reports
        if options is not None:
            if "txt" in args:
                # A double block sees the context apart; the single blocks after it get
                # [txt; img; ref] joined and cannot tell. The length holds for this whole
                # model call, so it goes into the call's own options (fresh for every call).
                options[TEXT_KEY] = args["txt"].shape[1]
            args = {**args, "transformer_options": {**options, BLOCK_KEY: (block_type, index)}}
        if previous is not None:
            return previous(args, extra, **kwargs)
        return extra["original_block"](args)

    publish_dit_block.hopfield_dit_block = (block_type, index)
    return publish_dit_block


def install_block_patches(model_patcher, blocks: Iterable[tuple[str, int]]) -> None:
    """Chain a publishing replace onto each (block type, i), keeping whatever replace was there
    (SkipLayerGuidance, another pack's); once per model lineage."""
    options = model_patcher.model_options["transformer_options"]
    replaces = options.get("patches_replace", {}).get("dit", {})
    for block_type, i in blocks:
        name = f"{block_type}_block"
        previous = replaces.get((name, i))
        if getattr(previous, "hopfield_dit_block", None) == (block_type, i):
            continue  # an earlier node of ours already publishes it
        model_patcher.set_model_patch_replace(
            _publishing_patch(block_type, i, previous), "dit", name, i
        )


def running_block(options: dict) -> tuple[str, int] | None:
    block = options.get(BLOCK_KEY)
    if block is None and options.get("block_type") in BLOCK_KINDS:  # hosts that publish it
        index = options.get("block_index")
        block = None if index is None else (options["block_type"], index)
    return block


def joint_layer(layer_map: LayerMap, options: dict) -> LayerId | None:
    """The layer of the running block (every call of these models is self-attention)."""
    block = running_block(options)
    return None if block is None else layer_map.by_key.get(tuple(block))


def _text_tokens(options: dict, n_q: int, image_tokens: int) -> int:
    text = options.get(TEXT_KEY)
    if text is None and options.get("img_slice"):  # newer hosts, single blocks
        text = options["img_slice"][0]
    if text is None:  # no double block ran (all skipped): exact unless reference tokens follow
        text = n_q - image_tokens
    return int(text)


def place_joint(layer_map: LayerMap, patch_size: int, options: dict, n_q: int,
                latent: tuple[int, ...] | None) -> Placement | None:
    """A call over [text; image; reference images] placed on the generated image's token grid:
    the reference tokens of Kontext/Qwen-Image-Edit follow the image tokens and are left out
    of the grid (they still take part in the steered attention, like the text)."""
    layer = joint_layer(layer_map, options)
    if layer is None or latent is None:
        return None
    grid = patch_grid(latent, patch_size)
    image_tokens = grid[0] * grid[1]
    text = _text_tokens(options, n_q, image_tokens)
    if text < 0 or text + image_tokens > n_q:
        return None
    return Placement(layer, grid, text)
