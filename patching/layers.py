"""Which self-attention layers a node acts on: the model's layer map and the `layers` setting.

SDXL (and SD1.x/SD2.x UNets) are indexed as in the paper: every attention module in diffusers
order (attn1 then attn2 of each transformer block; input blocks, middle, output blocks), so SDXL
has 140 modules: Down 0-47, Mid 48-67, Up 68-139; self-attention modules are the even indices.
SD3 is indexed by joint block 0..depth-1 and grouped in thirds (early, middle, late).

This module is pure Python: the layer map is built from plain lists the host code extracts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .call import LayerId

UNET_GROUPS = {"input": "down", "middle": "mid", "output": "up"}
SD3_GROUPS = ("early", "middle", "late")


@dataclass(frozen=True)
class LayerMap:
    """All self-attention layers of one model, in index order."""

    family: str  # "sdxl" | "sd3"
    layers: tuple[LayerId, ...]
    # SDXL: (block name, block number, block_index) -> layer; SD3: (block number,) -> layer
    by_key: dict[tuple, LayerId]
    patch_size: int = 1  # SD3: latent pixels per image token along each side

    @property
    def group_names(self) -> tuple[str, ...]:
        return ("down", "mid", "up") if self.family == "sdxl" else SD3_GROUPS


def unet_layer_map(transformer_depths: list[tuple[str, int, int]]) -> LayerMap:
    """Layer map of a UNet from its transformer blocks in forward order.

    ``transformer_depths``: one (block name, block number, depth) per SpatialTransformer, e.g.
    ("input", 4, 2) for SDXL's first transformer (two BasicTransformerBlocks). Each
    BasicTransformerBlock holds attn1 (index 2n) and attn2 (index 2n + 1).
    """
    layers, by_key, module = [], {}, 0
    for name, number, depth in transformer_depths:
        for block_index in range(depth):
            layer = LayerId("sdxl", module, UNET_GROUPS[name], "self")
            layers.append(layer)
            by_key[(name, number, block_index)] = layer
            module += 2
    return LayerMap("sdxl", tuple(layers), by_key)


def sd3_layer_map(depth: int, patch_size: int = 2) -> LayerMap:
    """Layer map of an MMDiT with ``depth`` joint blocks, grouped into thirds."""
    layers, by_key = [], {}
    for i in range(depth):
        group = SD3_GROUPS[min(3 * i // max(depth, 1), 2)]
        layer = LayerId("sd3", i, group, "joint")
        layers.append(layer)
        by_key[(i,)] = layer
    return LayerMap("sd3", tuple(layers), by_key, patch_size)


_TOKEN = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$")


def select_layers(spec: str, layer_map: LayerMap) -> frozenset[int]:
    """Parse a `layers` setting into the set of selected layer indices.

    Tokens, comma separated: ``all``, a group name (SDXL ``down``/``mid``/``up``, SD3
    ``early``/``middle``/``late``), an index ``n`` or a range ``a-b`` (inclusive). SDXL indices
    are the paper's 0-139 module index, so ranges like ``0-47`` work; odd (cross-attention)
    indices inside a range are simply not self-attention layers. Raises ValueError with the
    reason for an empty, malformed or out-of-range selection, or one that matches no
    self-attention layer.
    """
    tokens = [t.strip().lower() for t in (spec or "").split(",") if t.strip()]
    if not tokens:
        raise ValueError("layers is empty: use 'all', a group name, or indices like '0-47, 68'")
    available = {layer.index for layer in layer_map.layers}
    top = max(available) + (1 if layer_map.family == "sdxl" else 0)  # SDXL: last attn2 index
    chosen: set[int] = set()
    for token in tokens:
        if token == "all":
            chosen |= available
            continue
        if token in layer_map.group_names:
            chosen |= {layer.index for layer in layer_map.layers if layer.group == token}
            continue
        match = _TOKEN.match(token)
        if not match:
            names = ", ".join(("all", *layer_map.group_names))
            raise ValueError(
                f"layers: cannot read {token!r}; use {names}, an index or a range like 4-9"
            )
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if lo > hi:
            raise ValueError(f"layers: range {token!r} runs backwards")
        if hi > top:
            raise ValueError(
                f"layers: {token!r} is past the last layer index ({top}) of this "
                f"{layer_map.family.upper()} model"
            )
        chosen |= {i for i in range(lo, hi + 1) if i in available}
    if not chosen:
        raise ValueError(
            f"layers {spec!r} selects no self-attention layer (SDXL self-attention modules "
            "are the even indices of the paper's 0-139 index)"
        )
    return frozenset(chosen)
