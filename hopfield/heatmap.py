"""Per-token maps on the latent grid, and a diverging colour map for them (pure torch).

Token order is row-major on the attention layer's grid (SDXL: the UNet level's h x w; SD3: the
2 x 2 patch grid of the image tokens, which follow the text tokens). Maps from different levels
are resized to the latent grid before they are averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# red = conflict (lambda < 0), white = neutral, blue = reinforcement (lambda > 0)
_NEGATIVE = torch.tensor([0.80, 0.10, 0.15])
_NEUTRAL = torch.tensor([0.97, 0.97, 0.97])
_POSITIVE = torch.tensor([0.13, 0.35, 0.80])


def tokens_to_grid(token_map: torch.Tensor, grid: tuple[int, int], latent: tuple[int, int],
                   text_tokens: int = 0) -> torch.Tensor:
    """[B, L] per-token values -> [B, H_latent, W_latent] (bilinear when the grid is coarser)."""
    h, w = grid
    image = token_map[:, text_tokens:text_tokens + h * w].reshape(-1, 1, h, w)
    if (h, w) != tuple(latent):
        image = F.interpolate(image, size=tuple(latent), mode="bilinear", align_corners=False)
    return image[:, 0]


def diverging_colors(maps: torch.Tensor, limit: torch.Tensor | None = None) -> torch.Tensor:
    """[N, H, W] signed values -> IMAGE [N, H, W, 3] in 0..1, symmetric around zero.

    ``limit``: [N] value mapped to full colour; default the 99th percentile of |value| per map
    (robust to a few hot tokens). Non-finite values render neutral.
    """
    maps = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0)
    if limit is None:
        limit = torch.quantile(maps.abs().flatten(1), 0.99, dim=1)
    t = (maps / limit.clamp_min(1e-12).reshape(-1, 1, 1)).clamp(-1, 1).unsqueeze(-1)
    positive = _NEUTRAL + (_POSITIVE - _NEUTRAL) * t.clamp(min=0)
    negative = _NEUTRAL + (_NEGATIVE - _NEUTRAL) * (-t).clamp(min=0)
    return torch.where(t >= 0, positive, negative).clamp(0, 1)


def upscale(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """IMAGE [N, h, w, 3] -> [N, H, W, 3], nearest, so token cells stay crisp."""
    return F.interpolate(images.movedim(-1, 1), size=size, mode="nearest").movedim(1, -1)


def overlay(images: torch.Tensor, heat: torch.Tensor, opacity: float = 0.55) -> torch.Tensor:
    """Blend coloured maps [N, h, w, 3] over decoded images [N, H, W, 3] (resized bilinearly)."""
    size = images.shape[1:3]
    heat = F.interpolate(heat.movedim(-1, 1), size=size, mode="bilinear", align_corners=False)
    return (1 - opacity) * images + opacity * heat.movedim(1, -1).to(images)
