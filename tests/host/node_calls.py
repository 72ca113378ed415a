"""Calling the circulation nodes the way ComfyUI does, and watching what they do to each call."""

from __future__ import annotations

import torch


def skew(nodes, model, alpha=1.05, beta=3.0, start=0.0, end=1.0, layers="all",
         branch="both", space="value"):
    return nodes.SkewCirculation.execute(
        model, alpha, beta, start, end, layers, branch, space
    ).result[0]


def adaptive(nodes, model, alpha=1.2, beta=5.0, aggregation="per sample", start=0.0, end=1.0,
             layers="all", branch="both", space="value"):
    return nodes.AdaptiveCirculation.execute(
        model, alpha, beta, start, end, layers, branch, space, aggregation
    ).result[0]


def sdxl_attn1_override(patcher, step=None, latent_shape=None):
    """``call(q, k, v)``: ``patcher``'s attention override called as ComfyUI's UNet calls it
    for its first attn1 layer (q, k, v [2, 16, 10 x 64], chunks [uncond, cond], a 4 x 4 level;
    the unwrapped host attention, as wrap_attn hands it over), inside a model call at ``step``
    (default: sigma not read) with ``latent_shape``, as the step wrapper keeps it."""
    import comfy.ldm.modules.attention as host_attention
    from hopfield_circulation.families import adapter_for
    from hopfield_circulation.families.unet_attn1 import unet_attn1_marker
    from hopfield_circulation.hook.schedule import PATCH_KEY, UNREAD, ModelCall, running

    layer_key = next(iter(adapter_for(patcher).layer_map.by_key))
    call_options = dict(patcher.model_options["transformer_options"])
    override = call_options.pop("optimized_attention_override")
    call_options |= {"block": layer_key[:2], "block_index": layer_key[2],
                     "cond_or_uncond": [1, 0], "activations_shape": [2, 640, 4, 4]}
    unet_attn1_marker(patcher).key = (layer_key[:2], layer_key[2])
    host = host_attention.attention_pytorch.__wrapped__
    model_call = ModelCall(step or UNREAD, (1, 0), latent_shape, call_options.get(PATCH_KEY, 0))

    def call(q, k, v):
        with running(model_call):
            return override(host, q, k, v, 10, transformer_options=call_options)

    return call


def record_layers(patcher):
    """A clone whose observer records (layer index, kind, steered?) of every self-attention call."""
    from hopfield_circulation.hook.override import add_observer

    seen = []

    def observe(call, out, steering):
        seen.append((call.layer.index, call.layer.kind, steering is not None))

    m = patcher.clone()
    add_observer(m, observe)
    return m, seen


def compare_rows_with_host(patcher):
    """A clone with a foreign override outside ours that also runs the host's own attention on
    every call. Returns (clone, rows): rows gets (branch, same?, self-attention?) per chunk and
    call, "same" meaning the chunk of the final output equals the host's output bit for bit."""
    inner = patcher.model_options["transformer_options"]["optimized_attention_override"]
    rows = []

    def compare_with_host(func, *args, **kwargs):
        out = inner(func, *args, **kwargs)
        host = func(*args, **kwargs)
        chunks = kwargs["transformer_options"]["cond_or_uncond"]
        per = out.shape[0] // len(chunks)
        self_attention = args[0].shape[1] == args[1].shape[1]
        for i, branch in enumerate(chunks):
            part = slice(i * per, (i + 1) * per)
            rows.append((branch, torch.equal(out[part], host[part]), self_attention))
        return out

    m = patcher.clone()
    m.model_options["transformer_options"]["optimized_attention_override"] = compare_with_host
    return m, rows


def steered_layers(nodes, model, sample, layers: str, **sample_kw):
    """One sampling of ``model`` under Skew Circulation on ``layers``: (calls per layer index,
    the indices whose calls were steered)."""
    from collections import Counter

    m, seen = record_layers(skew(nodes, model, layers=layers))
    sample(m, **sample_kw)
    return Counter(index for index, _, _ in seen), {index for index, _, hit in seen if hit}


def built_on_meta(config_class: str, unet: dict, dtype: torch.dtype):
    """(model, patcher): ComfyUI's ``config_class`` (comfy.supported_models) built from
    ``unet`` at its full size on the meta device, no weights, as its model detection sets it
    up."""
    import comfy.model_patcher
    import comfy.supported_models

    config = getattr(comfy.supported_models, config_class)(dict(unet))
    config.set_inference_dtype(dtype, None)
    meta = torch.device("meta")
    with meta:
        model = config.get_model({}, device=meta)
    return model, comfy.model_patcher.ModelPatcher(model, load_device=meta, offload_device=meta)
