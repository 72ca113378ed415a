"""The fused Triton kernel through Triton's CPU interpreter, against float64 references.

The interpreter is slow: small shapes and 16-wide tiles. On CUDA the same kernel runs compiled
(benchmarks/bench_gpu.py); CI has no GPU, so this is where its math is checked.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton builds the kernel
triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from hopfield_circulation.hopfield import CirculationSettings, circulate_value_space  # noqa: E402
from hopfield_circulation.hopfield import reference as ref  # noqa: E402
from hopfield_circulation.hopfield.fused_triton import fused_skew_circulation  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="needs TRITON_INTERPRET=1 set before triton is used")
F64 = torch.float64
TILES = {"block_m": 16, "block_n": 16}


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def expected(q, k, v, alpha, beta, norm_match=True):
    base = torch.softmax(ref.logits(q, k), -1) @ v
    return ref.blend(base, ref.skew_scaled_attention(q, k, v, alpha), beta, norm_match)


@pytest.mark.parametrize("length, d", [(1, 64), (37, 64), (77, 128), (218, 64)])
@pytest.mark.parametrize("alpha", [1.05, 0.95, 0.0, -1.5])
def test_fused_matches_reference_fp32(length, d, alpha):
    if length == 218 and alpha != 0.95:
        pytest.skip("the SD3-like length runs once (interpreter time)")
    q, k, v = (rand(1, 2, length, d, seed=s) for s in (1, 2, 3))
    got = fused_skew_circulation(q.float(), k.float(), v.float(), alpha, 3.0, **TILES)
    torch.testing.assert_close(got.double(), expected(q, k, v, alpha, 3.0), rtol=1e-4,
                               atol=2e-5)


def test_per_sample_coefficients_and_no_norm_match():
    q, k, v = (rand(3, 1, 29, 64, seed=s) for s in (4, 5, 6))
    alphas, betas = torch.tensor([1.05, 0.9, 1.3]), torch.tensor([3.0, 2.0, 5.0])
    got = fused_skew_circulation(q.float(), k.float(), v.float(), alphas.reshape(3, 1, 1, 1),
                                 betas.reshape(3, 1, 1, 1), norm_match=False, **TILES)
    for b in range(3):
        exp = expected(q[b:b + 1], k[b:b + 1], v[b:b + 1], alphas[b].item(), betas[b].item(),
                       norm_match=False)
        torch.testing.assert_close(got[b:b + 1].double(), exp, rtol=1e-4, atol=2e-5)


def test_non_contiguous_inputs():
    """SD3 hands v as a strided view of the fused qkv projection."""
    qkv = rand(1, 21, 3, 2, 64, seed=7).float()  # [B, L, 3, H, d]
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not v.is_contiguous()
    got = fused_skew_circulation(q, k, v, 1.1, 3.0, **TILES)
    torch.testing.assert_close(got.double(), expected(q.double(), k.double(), v.double(), 1.1,
                                                      3.0), rtol=1e-4, atol=2e-5)


BF16_UNDER_INTERPRETER = pytest.mark.skip(
    reason="Triton's CPU interpreter computes bf16 tl.dot wrongly (numpy has no bf16); "
    "bf16 accuracy is measured on a GPU by benchmarks/bench_gpu.py")


@pytest.mark.parametrize("dtype, tolerance", [
    (torch.float16, 0.02), pytest.param(torch.bfloat16, 0.05, marks=BF16_UNDER_INTERPRETER)])
def test_low_precision_keeps_the_steering_change(dtype, tolerance):
    """The change Δ = out − baseline is a small difference amplified by β; the fused kernel
    keeps it in fp32. Relative error of Δ against float64 stays small at α near 1."""
    q, k, v = (rand(1, 2, 48, 64, seed=s) for s in (8, 9, 10))
    base = torch.softmax(ref.logits(q, k), -1) @ v
    delta = expected(q, k, v, 0.97, 3.0) - base
    got = fused_skew_circulation(q.to(dtype), k.to(dtype), v.to(dtype), 0.97, 3.0, **TILES)
    err = (got.double() - base - delta).norm() / delta.norm()
    assert err < tolerance, f"{dtype}: Δ error {err:.3f}"


def test_dispatch_and_errors():
    q, k, v = (rand(1, 1, 20, 64, seed=s).float() for s in (11, 12, 13))
    base = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    fused = circulate_value_space(q, k, v, None, CirculationSettings(1.1, 3.0, kernel="fused"))
    two_call = circulate_value_space(q, k, v, base, CirculationSettings(1.1, 3.0,
                                                                         kernel="two_call"))
    torch.testing.assert_close(fused.out, two_call.out, rtol=1e-4, atol=1e-5)
    auto = CirculationSettings(1.1, 3.0)  # CPU tensors: auto keeps the two-call path
    with pytest.raises(ValueError, match="needs the baseline"):
        circulate_value_space(q, k, v, None, auto)
    with pytest.raises(ValueError, match="head dim|d in"):
        fused_skew_circulation(q[..., :48], k[..., :48], v[..., :48], 1.1, 3.0)
    with pytest.raises(ValueError, match="kernel"):
        CirculationSettings(kernel="fast")
