"""Cases for the Stability Probe's one-launch Triton kernel under Triton's CPU interpreter (see
tests/core/interpreter.py), against the literal float64 measures (the torch path, itself tested
against the explicit L x L formulas in test_stability_math.py)."""

from __future__ import annotations

import pytest
import torch
from core.interpreter import require_interpreter

require_interpreter()

from hopfield_circulation.hopfield.stability import layer_stability  # noqa: E402
from hopfield_circulation.hopfield.stability_triton import (  # noqa: E402
    eligible,
    stability_triton,
)

F64 = torch.float64
SMALL = (16, 1, 1)  # tokens per tile, warps, stages: several tiles plus a partial one
NAMES = ("energy", "instability", "align", "eta")


def inputs(batch, heads, length, seed, dtype, d=64):
    """q, k with offsets (centring matters, as in real activations) and a retrieval whose
    column means dominate its spread (as attention outputs' do), rounded to ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, d, generator=gen, dtype=F64) + 0.5
    k = torch.randn(batch, heads, length, d, generator=gen, dtype=F64) - 0.3
    x = torch.randn(batch, heads, length, d, generator=gen, dtype=F64) * 0.5 + 1.0
    return tuple(t.to(dtype) for t in (q, k, x))


def measured(q, k, x, config=SMALL):
    return stability_triton(q, k, x, config=config)


# fp32: the same math as float64 up to fp32 rounding. fp16/bf16: what CUDA computes, the
# centred retrieval and the field's weights rounded to the dtype before their products (the
# torch path on CUDA does the same; test_gpu.py bounds both against float64 there).
# From 5 tokens: at one, eta's rank-one Grams are the trace form's worst cancellation in fp32
# (eta_kernel_cases.py) and every other measure is zero (nothing is left once centred).
@pytest.mark.parametrize("length", [5, 37, 100])
@pytest.mark.parametrize("d", [64, 128])  # 128: two programs per head, eta by its own kernel
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.float16, 1e-3),
                                        (torch.bfloat16, 5e-3)])
def test_matches_the_float64_measures(length, d, dtype, tol):
    q, k, x = inputs(2, 3, length, seed=length, dtype=dtype, d=d)
    means, token_map = measured(q, k, x)
    exact = layer_stability(q.double(), k.double(), x.double())
    for i, name in enumerate(NAMES):
        torch.testing.assert_close(means[:, i].double(), getattr(exact, name), rtol=tol,
                                   atol=tol, msg=name)
    torch.testing.assert_close(token_map.double(), exact.token_map, rtol=tol, atol=tol)


def test_strided_inputs_and_default_tiles():
    """Heads-first views of the host's [B, L, H, d] and of SD3's joint qkv projection, with the
    kernel's default tiles (one full tile and a tail at 45 tokens)."""
    gen = torch.Generator().manual_seed(7)
    qkv = torch.randn(2, 45, 3, 2, 64, generator=gen, dtype=F64)
    q, k, x = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    q, k = q + 0.4, k - 0.2
    means, token_map = measured(q.float(), k.float(), x.float(), config=None)
    exact = layer_stability(q, k, x)
    for i, name in enumerate(NAMES):
        torch.testing.assert_close(means[:, i].double(), getattr(exact, name), rtol=2e-6,
                                   atol=2e-6, msg=name)
    torch.testing.assert_close(token_map.double(), exact.token_map, rtol=2e-6, atol=2e-6)


def test_zero_columns_give_zero_not_nan():
    q, k, x = inputs(1, 2, 30, seed=9, dtype=torch.float32)
    x[..., :5] = 2.0  # constant columns: zero once centred
    means, token_map = measured(q, k, x)
    assert torch.isfinite(means).all() and torch.isfinite(token_map).all()
    exact = layer_stability(q.double(), k.double(), x.double())
    for i, name in enumerate(NAMES):
        torch.testing.assert_close(means[:, i].double(), getattr(exact, name), rtol=2e-6,
                                   atol=2e-6, msg=name)


def test_cpu_calls_keep_the_torch_path():
    q, k, x = inputs(1, 1, 8, seed=5, dtype=torch.float16)
    assert not eligible(q, k, x)
