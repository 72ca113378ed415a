"""HiDream (HiDream-I1 Full, Dev and Fast; HiDream-E1 edit): ComfyUI's
``HiDreamImageTransformer2DModel``.

Double-stream blocks attend jointly over [image; text], then single-stream blocks over the same
joined sequence; q and k reach the override after qk-norm and RoPE as [B, L, H*d] with ``heads``
(head dim 128). The image's tokens come first, the text after them (T5, then Llama 3.1 layers):
the map's image tokens start at token 0. HiDream-E1 concatenates its reference image to the
right of the latent, so each row of image tokens holds the generated row, then the reference's:
the λ maps keep the generated image's columns. Layers are the double blocks 0..n-1, then the
single blocks (I1: 0-15 and 16-47), in early/middle/late thirds; "double" and "single" name
each kind.

No ComfyUI release tells these blocks' attention which block runs, and the model's loop has no
block replace to publish it (as Flux's has). Each block's attention processor, a plain
attribute of its ``attn1``, is therefore wrapped by a model-scoped object patch that hands the
processor a copy of the options naming the block; a double block also notes the image's token
count in the model call's own options, for the single blocks after it that see the sequence
joined. The processor itself runs as before (a previous object patch on it is chained).
"""

from __future__ import annotations

from ..hook.layers import LayerId, LayerMap
from .base import FamilyAdapter, Placement, callable_to_wrap, no_block_input, patch_grid
from .dit_blocks import BLOCK_KEY, dit_layer_map, joint_layer

# The image's token count (E1: generated and reference columns), set by each double block in
# the model call's options
IMAGE_KEY = "hopfield_circulation_image_tokens"
STREAMS = {"double": "double_stream_blocks", "single": "single_stream_blocks"}


def processor_path(block_type: str, index: int) -> str:
    return f"diffusion_model.{STREAMS[block_type]}.{index}.block.attn1.processor"


def _publishing_processor(block_type: str, index: int, previous):
    """A processor that tells attention which block runs, then runs ``previous`` as before."""

    def publish_hidream_block(attn, *args, **kwargs):
        options = kwargs.get("transformer_options")
        # A pack's copy of the model's loop may pass no options: its attention then runs
        # without the model's override, which intact.py reports
        if options is not None:
            image = kwargs.get("image_tokens", args[0] if args else None)
            if block_type == "double" and image is not None:
                # The single blocks get [image; text] joined and cannot tell: the count holds
                # for this whole model call, so it goes into the call's own options
                options[IMAGE_KEY] = image.shape[1]
            kwargs["transformer_options"] = {**options, BLOCK_KEY: (block_type, index)}
        return previous(attn, *args, **kwargs)

    publish_hidream_block.hopfield_hidream_block = (block_type, index)
    publish_hidream_block.__wrapped__ = previous
    return publish_hidream_block


class HiDreamFamily(FamilyAdapter):
    name = "hidream"
    supported = "HiDream (I1, E1)"
    input_space_refusal = no_block_input(
        "HiDream's double blocks project text and image with different W_v")

    @staticmethod
    def matches(diffusion_model) -> bool:
        from comfy.ldm.hidream.model import HiDreamImageTransformer2DModel

        return isinstance(diffusion_model, HiDreamImageTransformer2DModel)

    def build_layer_map(self, model_patcher) -> LayerMap:
        net = model_patcher.get_model_object("diffusion_model")
        self.patch_size = int(net.patch_size)
        counts = {"double": len(net.double_stream_blocks),
                  "single": len(net.single_stream_blocks)}
        return dit_layer_map(self.name, "HiDream", counts, aliases=True)

    def install(self, model_patcher) -> None:
        # Every processor first: a host lacking one refuses the model before any is patched
        processors = {processor_path(*block): (block, callable_to_wrap(
            model_patcher, processor_path(*block), "HiDream blocks' attention processors"))
            for block in self.layer_map.by_key}
        for path, (block, previous) in processors.items():
            if getattr(previous, "hopfield_hidream_block", None) == block:
                continue  # an earlier node of ours already publishes it
            model_patcher.add_object_patch(path, _publishing_processor(*block, previous))

    def self_attention_layer(self, options: dict) -> LayerId | None:
        return joint_layer(self.layer_map, options)

    def place(self, options: dict, n_q: int, n_k: int,
              latent_shape: tuple[int, ...] | None) -> Placement | None:
        layer = self.self_attention_layer(options)
        if layer is None or latent_shape is None:
            return None
        rows, columns = patch_grid(latent_shape, self.patch_size)
        image = int(options.get(IMAGE_KEY) or rows * columns)
        row_tokens = image // rows  # E1: the reference's columns follow each row's own
        if image > n_q or image % rows or row_tokens < columns:
            return Placement(layer, None)  # steered; no map where the grid is not known
        return Placement(layer, (rows, columns) if row_tokens == columns
                         else (rows, columns, row_tokens))
