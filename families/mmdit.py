"""MMDiT: SD3 and SD3.5 (Large and Medium).

Layers are the joint blocks 0..depth-1, grouped in thirds (early, middle, late). The host passes
no block index to attention in 0.3.64, so ``dit`` double_block replace patches publish it
(chained with whatever replace was there, e.g. SkipLayerGuidanceDiT); newer hosts that pass
``block_type``/``block_index`` themselves are read directly. A joint call's sequence is
[text; image]; SD3.5-M adds an image-only self-attention in some blocks, placed as "image_self".

A replaced block is run as the host's own loop runs it: the ``original_block`` that ComfyUI's
replace path hands over calls the block without the model's ``use_checkpoint`` (False for
inference), so every joint block went through ``torch.utils.checkpoint``, whose RNG-state
stashing costs host time in every block of every model call and saves nothing without
gradients. Ours passes the model's own setting, so checkpointing happens exactly where the
unpatched model does it (training with ``use_checkpoint`` set). The host's ``original_block`` is
kept in a compile trace (its graph pays no host time per block), where the model runs a loop
or blocks other than the host's (a pack that swaps the model's class), and on a host whose
replace path calls its blocks otherwise than 0.3.64 does (read from its source, once).
"""

from __future__ import annotations

import functools
import inspect

import torch

from ..hook.layers import LayerId, LayerMap
from .base import FamilyAdapter, Placement, no_block_input, patch_grid
from .dit_blocks import GROUPS, third_of

BLOCK_KEY = "hopfield_circulation_block"  # the joint block index, published per block


def mmdit_layer_map(depth: int) -> LayerMap:
    """Layer map of an MMDiT with ``depth`` joint blocks, grouped into thirds."""
    layers, by_key = [], {}
    for i in range(depth):
        layer = LayerId("sd3", i, third_of(i, depth), "joint")
        layers.append(layer)
        by_key[(i,)] = layer
    return LayerMap(
        "sd3", tuple(layers), by_key, GROUPS, last_index=depth - 1,
        index_hint=f"SD3 layers are the joint blocks 0-{depth - 1}, and groups with no block "
        "on a shallow model select nothing",
        report_note="SD3: align_down, align_mid and align_up carry the early, middle and late "
        "thirds of the joint blocks.",
    )


def block_index(options: dict) -> int | None:
    index = options.get(BLOCK_KEY)
    if index is None and options.get("block_type") == "double":  # hosts that publish it
        index = options.get("block_index")
    return index


def _block_index_patch(index: int, previous, run_block):
    """A dit double_block replace that publishes the block index, then runs the block as before
    (``run_block``: the block as the host's own loop runs it, or None for the host's
    ``original_block``; the host's inside a compile trace). A replace chained before ours gets
    ``run_block`` as its original."""

    def publish_block_index(args, extra, **kwargs):
        options = args.get("transformer_options")
        if options is None:  # a pack's copy of the model's loop: nothing to publish into
            return (previous(args, extra, **kwargs) if previous is not None
                    else extra["original_block"](args))
        args = {**args, "transformer_options": {**options, BLOCK_KEY: index}}
        # A compiled graph pays no host time per block, and dynamo cannot trace the model
        # reached through our closure while it traces it as the caller's ``self``
        if (run_block is not None and not torch.compiler.is_compiling()
                and run_block.stock_loop()):
            extra = {**extra, "original_block": run_block}
        if previous is not None:
            return previous(args, extra, **kwargs)
        return extra["original_block"](args)

    publish_block_index.hopfield_block_index = index
    return publish_block_index


# What the host's replace path calls as ``original_block`` (0.3.64), whitespace aside: the
# runner below makes the same call with the model's ``use_checkpoint`` added, and is used only
# where the host's loop still makes exactly this one
HOST_BLOCK_CALL = ('self.joint_blocks[i](args["txt"], args["img"], c=args["vec"], '
                   'transformer_options=args["transformer_options"])')


@functools.cache
def _host_block_call_known() -> bool:
    """The host's replace path calls its joint blocks as ``HOST_BLOCK_CALL`` does, and they
    take ``use_checkpoint`` (``block_mixing``); read once per process from its source."""
    from comfy.ldm.modules.diffusionmodules import mmdit

    try:
        source = inspect.getsource(mmdit.MMDiT.forward_core_with_concat)
        takes_it = "use_checkpoint" in inspect.signature(mmdit.block_mixing).parameters
    except (AttributeError, OSError, TypeError, ValueError):
        return False

    def bare(text: str) -> str:
        return "".join(text.split())

    return takes_it and bare(HOST_BLOCK_CALL) in bare(source)


def _joint_block_runner(base_model, index: int):
    """The joint block ``index`` as the host's unreplaced loop calls it, with the model's own
    ``use_checkpoint``; the same {"txt", "img"} as the replace path's ``original_block``. The
    block is looked up on the live model at each call, so object patches applied since are
    honoured. ``run_joint_block.stock_loop()``: the model runs the host's own loop and block
    (a pack that swaps the model's class brings its own ``original_block``, which is kept)."""
    from comfy.ldm.modules.diffusionmodules.mmdit import JointBlock, MMDiT

    host_loop = MMDiT.forward_core_with_concat

    def run_joint_block(args):
        net = base_model.diffusion_model
        txt, img = net.joint_blocks[index](
            args["txt"], args["img"], c=args["vec"],
            transformer_options=args["transformer_options"],
            use_checkpoint=net.use_checkpoint)
        return {"txt": txt, "img": img}

    def stock_loop() -> bool:
        net = base_model.diffusion_model
        return getattr(type(net), "forward_core_with_concat", None) is host_loop \
            and type(net.joint_blocks[index]) is JointBlock

    run_joint_block.stock_loop = stock_loop
    return run_joint_block


class MMDiTFamily(FamilyAdapter):
    name = "sd3"
    supported = "SD3/SD3.5 MMDiT"
    input_space_refusal = no_block_input(
        "SD3's joint attention projects text and image with different W_v")

    @staticmethod
    def matches(diffusion_model) -> bool:
        from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

        return isinstance(diffusion_model, MMDiT)

    def build_layer_map(self, model_patcher) -> LayerMap:
        net = model_patcher.get_model_object("diffusion_model")
        self.patch_size = int(getattr(net, "patch_size", 2))  # latent pixels per token side
        return mmdit_layer_map(len(net.joint_blocks))

    def install(self, model_patcher) -> None:
        options = model_patcher.model_options["transformer_options"]
        replaces = options.get("patches_replace", {}).get("dit", {})
        direct = _host_block_call_known()
        for i in range(len(self.layer_map.layers)):
            previous = replaces.get(("double_block", i))
            if getattr(previous, "hopfield_block_index", None) == i:
                continue  # an earlier node of ours already publishes it
            run_block = _joint_block_runner(model_patcher.model, i) if direct else None
            model_patcher.set_model_patch_replace(
                _block_index_patch(i, previous, run_block), "dit", "double_block", i
            )

    def self_attention_layer(self, options: dict) -> LayerId | None:
        index = block_index(options)
        return None if index is None else self.layer_map.by_key.get((index,))

    def place(self, options: dict, n_q: int, n_k: int,
              latent_shape: tuple[int, ...] | None) -> Placement | None:
        index = block_index(options)
        if index is None or latent_shape is None:
            return None
        layer = self.layer_map.by_key.get((index,))
        if layer is None:
            return None
        grid = patch_grid(latent_shape, self.patch_size)
        image_tokens = grid[0] * grid[1]
        if n_q == image_tokens:  # SD3.5-M's extra image-only self-attention in the same block
            return Placement(LayerId("sd3", layer.index, layer.group, "image_self"), grid)
        if n_q < image_tokens:
            return None
        return Placement(layer, grid, n_q - image_tokens)  # [text; image]: context first
