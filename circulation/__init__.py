"""The circulation feature: Skew and Adaptive Circulation as a handler on the attention hook."""

from .patch import patch_circulation

__all__ = ["patch_circulation"]
