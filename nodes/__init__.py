"""The pack's V3 nodes. Thin: each parses its inputs and hands them to a feature package."""

from comfy_api.v0_0_2 import ComfyExtension, io

from .circulation_nodes import CIRCULATION_NODES
from .probe_nodes import PROBE_NODES
from .rank_node import RANK_NODES


class HopfieldCirculationExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*CIRCULATION_NODES, *PROBE_NODES, *RANK_NODES]
