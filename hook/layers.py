"""Which self-attention layers a node acts on: a model's layer map and the `layers` setting.

Each family adapter (``families/``) builds the map of its models: the layer indices, the group
names a user can type and what an index means. This module only reads the user's selection
against a map, whatever the family. Pure Python: testable without the host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..vocabulary import LayerKind


@dataclass(frozen=True)
class LayerId:
    """Where a self-attention call sits in the model.

    family: the adapter's name for the layer index ("sdxl": the paper's SDXL module index, also
            used for SD1.x/SD2.x UNets; "sd3": the MMDiT joint block index).
    index:  the layer's number in that index.
    group:  the block group it belongs to (e.g. "down"/"mid"/"up" or "early"/"middle"/"late").
    kind:   how the call relates to the sequence (vocabulary.LayerKind).
    """

    family: str
    index: int
    group: str
    kind: LayerKind


@dataclass(frozen=True)
class LayerMap:
    """All self-attention layers of one model, in index order, and how a user names them."""

    family: str
    layers: tuple[LayerId, ...]
    by_key: dict[tuple, LayerId]  # the adapter's placement key -> layer
    group_names: tuple[str, ...]  # the groups a `layers` setting may name, in display order
    last_index: int  # the largest index a range may reach (UNets: the last attn2 module)
    index_hint: str  # what the indices mean, for the message of an empty selection
    report_note: str = ""  # how the report's Down/Mid/Up outputs map onto this family's groups
    # Further names a `layers` setting may use, beyond the report groups (e.g. Flux's "double"
    # and "single" blocks): name -> the layer indices it selects
    aliases: dict[str, frozenset[int]] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a `layers` setting may use on this model, besides indices."""
        return (*self.group_names, *self.aliases)


_TOKEN = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$")


def parse_layer_tokens(spec: str, group_names: tuple[str, ...]) -> list[str | tuple[int, int, str]]:
    """The tokens of a `layers` setting: "all", group names and (lo, hi, token) index ranges.

    Needs no model, so a prompt with an unreadable setting is refused at queue time. Raises
    ValueError naming what cannot be read.
    """
    tokens = [t.strip().lower() for t in (spec or "").split(",") if t.strip()]
    if not tokens:
        raise ValueError("layers is empty: use 'all', a group name, or indices like '0-47, 68'")
    parsed: list[str | tuple[int, int, str]] = []
    for token in tokens:
        if token == "all" or token in group_names:
            parsed.append(token)
            continue
        match = _TOKEN.match(token)
        if not match:
            names = ", ".join(("all", *group_names))
            raise ValueError(
                f"layers: cannot read {token!r}; use {names}, an index or a range like 4-9"
            )
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if lo > hi:
            raise ValueError(f"layers: range {token!r} runs backwards")
        parsed.append((lo, hi, token))
    return parsed


def select_layers(spec: str, layer_map: LayerMap) -> frozenset[int]:
    """Parse a `layers` setting into the set of selected layer indices.

    Tokens, comma separated: ``all``, a group name or alias of the map, an index ``n`` or a range
    ``a-b`` (inclusive). Indices inside a range that are no self-attention layer (UNet attn2
    modules) are simply not selected. Raises ValueError with the reason for an empty,
    malformed or out-of-range selection, or one that matches no self-attention layer.
    """
    available = {layer.index for layer in layer_map.layers}
    chosen: set[int] = set()
    for token in parse_layer_tokens(spec, layer_map.names):
        if token == "all":
            chosen |= available
        elif token in layer_map.aliases:
            chosen |= layer_map.aliases[token] & available
        elif isinstance(token, str):
            chosen |= {layer.index for layer in layer_map.layers if layer.group == token}
        else:
            lo, hi, text = token
            if hi > layer_map.last_index:
                raise ValueError(
                    f"layers: {text!r} is past the last layer index ({layer_map.last_index}) "
                    f"of this {layer_map.family.upper()} model"
                )
            chosen |= {i for i in range(lo, hi + 1) if i in available}
    if not chosen:
        raise ValueError(
            f"layers {spec!r} selects no self-attention layer ({layer_map.index_hint})"
        )
    return frozenset(chosen)
