"""One adapter per model family (``base.FamilyAdapter``), and detection: ``adapter_for`` gives
the adapter of a ModelPatcher's model, or refuses it with a message naming what is supported,
so a node never silently does nothing on an unsupported model.
"""

from __future__ import annotations

from .base import FamilyAdapter, InputSpace, Placement, UnsupportedModelError
from .mmdit import MMDiTFamily
from .unet import UNetFamily

ADAPTERS: tuple[type[FamilyAdapter], ...] = (UNetFamily, MMDiTFamily)


def adapter_for(model_patcher) -> FamilyAdapter:
    """The adapter of this model's family, bound to it; raises UnsupportedModelError."""
    net = model_patcher.get_model_object("diffusion_model")
    for adapter in ADAPTERS:
        if adapter.matches(net):
            return adapter(model_patcher)
    supported = " and ".join(a.supported for a in ADAPTERS)
    raise UnsupportedModelError(
        f"Hopfield Circulation supports {supported} models; this model is "
        f"{type(model_patcher.model).__name__} with a {type(net).__name__} backbone"
    )


__all__ = ["ADAPTERS", "FamilyAdapter", "InputSpace", "Placement", "UnsupportedModelError",
           "adapter_for"]
