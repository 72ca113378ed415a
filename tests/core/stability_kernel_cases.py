"""Cases for the Stability Probe's Triton kernels (four launches) under Triton's CPU
interpreter (see tests/core/interpreter.py), against the literal float64 measures (the torch
path, itself tested against the explicit L x L formulas in test_stability_math.py)."""

from __future__ import annotations

import pytest
import torch
from core.compiled_ops import pack_ops_when_compiled
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


def measured(q, k, x, config=SMALL, splits=None):
    return stability_triton(q, k, x, config=config, splits=splits)


def assert_measures(means, token_map, exact, tol):
    for i, name in enumerate(NAMES):
        torch.testing.assert_close(means[:, i].double(), getattr(exact, name), rtol=tol,
                                   atol=tol, msg=name)
    torch.testing.assert_close(token_map.double(), exact.token_map, rtol=tol, atol=tol)


# fp32: the same math as float64 up to fp32 rounding. fp16/bf16: what CUDA computes, the
# retrieval less its reference values and the field's weights rounded to the dtype before
# their products (test_gpu.py bounds the kernel and the torch path against float64 there).
# From 5 tokens: at one, eta's rank-one Grams are the trace form's worst cancellation in fp32
# (eta_kernel_cases.py) and every other measure is zero (nothing is left once centred).
@pytest.mark.parametrize("length", [5, 37, 100])
@pytest.mark.parametrize("d", [64, 128])  # 128: two programs per head, eta by its own kernel
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.float16, 1e-3),
                                        (torch.bfloat16, 5e-3)])
def test_matches_the_float64_measures(length, d, dtype, tol):
    q, k, x = inputs(2, 3, length, seed=length, dtype=dtype, d=d)
    means, token_map = measured(q, k, x)
    assert_measures(means, token_map, layer_stability(q.double(), k.double(), x.double()), tol)


@pytest.mark.parametrize("splits", [1, 2, 3, 7])  # 7: one tile per chunk, the last partial
def test_any_split_of_the_tokens_gives_the_measures(splits):
    """The tokens cut into 1 to 7 chunks (100 tokens, tiles of 16: uneven chunks, a partial
    last tile): the same measures up to fp32 rounding, and the same bits when run again."""
    q, k, x = inputs(2, 3, 100, seed=3, dtype=torch.float32)
    means, token_map = measured(q, k, x, splits=splits)
    assert_measures(means, token_map, layer_stability(q.double(), k.double(), x.double()),
                    2e-6)
    again = measured(q, k, x, splits=splits)
    assert torch.equal(again[0], means) and torch.equal(again[1], token_map)


def test_tokens_far_from_the_columns_means():
    """SD3's joint attention puts its text tokens first, and they can sit far from the image
    tokens' mean. The reference values come from tokens spread over the whole sequence, so
    the centring after the products cancels little: fp16 stays within 2e-4 of float64 (a
    sign flip of one lambda moves r by 6.5e-5 here)."""
    q, k, x = inputs(1, 2, 120, seed=4, dtype=torch.float64)
    x[:, :, :20] += 400.0  # the first sixth: far off
    q, k, x = (t.half() for t in (q, k, x))
    means, token_map = measured(q, k, x, splits=3)
    assert_measures(means, token_map, layer_stability(q.double(), k.double(), x.double()),
                    2e-4)


def test_strided_inputs_and_default_tiles():
    """Heads-first views of the host's [B, L, H, d] and of SD3's joint qkv projection, with the
    kernel's default tiles (one full tile and a tail at 45 tokens)."""
    gen = torch.Generator().manual_seed(7)
    qkv = torch.randn(2, 45, 3, 2, 64, generator=gen, dtype=F64)
    q, k, x = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    q, k = q + 0.4, k - 0.2
    means, token_map = measured(q.float(), k.float(), x.float(), config=None)
    assert_measures(means, token_map, layer_stability(q, k, x), 2e-6)


def test_zero_columns_give_zero_not_nan():
    q, k, x = inputs(1, 2, 30, seed=9, dtype=torch.float32)
    x[..., :5] = 2.0  # constant columns: zero once centred
    for splits in (1, 2):
        means, token_map = measured(q, k, x, splits=splits)
        assert torch.isfinite(means).all() and torch.isfinite(token_map).all()
        assert_measures(means, token_map, layer_stability(q.double(), k.double(), x.double()),
                        2e-6)


def test_cpu_calls_keep_the_torch_path():
    q, k, x = inputs(1, 1, 8, seed=5, dtype=torch.float16)
    assert not eligible(q, k, x)


@pytest.mark.parametrize("d", [64, 128])  # 128: eta's own launches inside the op too
def test_torch_compile_calls_the_kernels_as_one_op(monkeypatch, d):
    """Under torch.compile (inductor, fullgraph: no graph break) an eligible call is the
    registered op, which runs the probe's kernels: the eager kernels' result, bit for bit, on
    the same strided views the probe hands over."""
    from hopfield_circulation.hopfield import stability_triton

    monkeypatch.setattr(stability_triton, "eligible", lambda q, k, x: True)
    gen = torch.Generator().manual_seed(11)
    qkv = torch.randn(2, 37, 3, 2, d, generator=gen)  # the host's [B, L, 3, H, d] projection
    q, k, x = (qkv[:, :, i].transpose(1, 2) for i in range(3))

    def probe(q, k, x):
        return layer_stability(q, k, x).packed

    assert pack_ops_when_compiled(probe, q, k, x) == {"stability_packed": 1}


def test_the_op_takes_the_torch_path_once_the_kernels_failed(monkeypatch):
    """A graph traced before the kernels failed in this process still calls the op: it then
    gives the torch path's result."""
    from hopfield_circulation.hopfield import stability_triton
    from hopfield_circulation.hopfield.stability import layer_stability_torch

    q, k, x = inputs(1, 2, 30, seed=12, dtype=torch.float32)
    monkeypatch.setattr(stability_triton, "_FAILED", ["out of resource"])
    assert torch.equal(stability_triton.STABILITY_OP(q, k, x),
                       layer_stability_torch(q, k, x).packed)
