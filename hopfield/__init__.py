"""ComfyUI-free core of Hopfield Circulation: the paper's math in pure torch.

Tensors follow the SDPA layout [batch, heads, tokens, features]. Nothing here imports ComfyUI.
"""

from .blend import blend_retrievals
from .circulation import (
    CirculationResult,
    CirculationSettings,
    circulate_input_space,
    circulate_rows,
    circulate_value_space,
)
from .skew import concat_features, skew_scaled_attention
from .symmetry import adaptive_coefficients, aggregate_eta, symmetry_index

__all__ = [
    "CirculationResult",
    "CirculationSettings",
    "adaptive_coefficients",
    "aggregate_eta",
    "blend_retrievals",
    "circulate_input_space",
    "circulate_rows",
    "circulate_value_space",
    "concat_features",
    "skew_scaled_attention",
    "symmetry_index",
]
