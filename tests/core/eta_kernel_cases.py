"""Cases for the symmetry-index Triton kernels (one launch, or two with the tokens split) under
Triton's CPU interpreter (see tests/core/interpreter.py), against the literal float64 eta_M
(explicit L x L decomposition)."""

from __future__ import annotations

import pytest
import torch
from core.compiled_ops import pack_ops_when_compiled
from core.interpreter import require_interpreter

require_interpreter()

from hopfield_circulation.hopfield import reference as ref  # noqa: E402
from hopfield_circulation.hopfield.eta_triton import eligible, symmetry_index_triton  # noqa: E402
from hopfield_circulation.hopfield.symmetry import symmetry_index  # noqa: E402

F64 = torch.float64
SMALL = (16, 1, 1)  # tokens per tile, warps, stages: several tiles plus a partial one


def rounded_qk(batch, heads, length, d, seed, dtype, skew=0.5):
    """q and k with partly shared structure (eta well inside (-1, 1)), rounded to ``dtype``,
    and their exact float64 values."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, heads, length, d, generator=gen, dtype=F64)
    q = base + skew * torch.randn(base.shape, generator=gen, dtype=F64)
    k = base @ torch.randn(d, d, generator=gen, dtype=F64) / d**0.5 + skew * torch.randn(
        base.shape, generator=gen, dtype=F64)
    q, k = q.to(dtype), k.to(dtype)
    return (q, k), (q.double(), k.double())


@pytest.mark.parametrize("length", [1, 16, 37, 130])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_the_float64_decomposition(length, d, dtype):
    (q, k), (q64, k64) = rounded_qk(2, 3, length, d, seed=length + d, dtype=dtype)
    got = symmetry_index_triton(q, k, config=SMALL)
    assert got.dtype == torch.float32 and got.shape == (2, 3)
    # fp16/bf16 products are exact in fp32; fp32 ones round, and one token (rank-one Grams)
    # is the trace form's worst cancellation: 5e-5 there, 1e-7 from 16 tokens on.
    atol = 1e-4 if dtype == torch.float32 and length == 1 else 2e-6
    torch.testing.assert_close(got.double(), ref.symmetry_index(q64, k64), rtol=0, atol=atol)


@pytest.mark.parametrize("splits", [2, 3, 9])  # 9: one tile per chunk, the last partial
@pytest.mark.parametrize("d", [64, 128])
def test_split_tokens_give_the_float64_eta_and_the_same_bits_again(splits, d):
    """The tokens in 2 to 9 chunks (130 tokens, tiles of 16), their Grams summed by the
    reduction: eta within fp32 rounding of float64, and bit for bit the same when run again."""
    (q, k), (q64, k64) = rounded_qk(2, 3, 130, d, seed=d + splits, dtype=torch.float16)
    got = symmetry_index_triton(q, k, config=SMALL, splits=splits)
    torch.testing.assert_close(got.double(), ref.symmetry_index(q64, k64), rtol=0, atol=2e-6)
    assert torch.equal(symmetry_index_triton(q, k, config=SMALL, splits=splits), got)


def test_default_tiles_and_the_torch_path_agree():
    """ETA_CONFIGS' tiles (one full tile and a tail) against the torch path on the same input."""
    (q, k), (q64, k64) = rounded_qk(1, 2, 100, 64, seed=3, dtype=torch.float16)
    got = symmetry_index_triton(q, k)
    torch.testing.assert_close(got, symmetry_index(q, k), rtol=0, atol=2e-5)
    torch.testing.assert_close(got.double(), ref.symmetry_index(q64, k64), rtol=0, atol=2e-5)


def test_strided_inputs_as_the_models_pass_them():
    """q, k as views: heads-first views of [B, L, H, d] (the UNet's) and slices of one joint
    qkv tensor [B, L, 3, H, d] (SD3's)."""
    gen = torch.Generator().manual_seed(11)
    qkv = torch.randn(2, 45, 3, 4, 64, generator=gen).to(torch.float16)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
    assert not q.is_contiguous()
    got = symmetry_index_triton(q, k, config=SMALL)
    torch.testing.assert_close(got.double(), ref.symmetry_index(q.double(), k.double()),
                               rtol=0, atol=2e-5)


def test_symmetric_antisymmetric_and_zero_logits():
    """k = q gives eta = 1 exactly in the limit; all-zero input gives 0, not NaN."""
    (q, _), _ = rounded_qk(1, 2, 40, 64, seed=4, dtype=torch.float32)
    assert torch.allclose(symmetry_index_triton(q, q, config=SMALL), torch.ones(1, 2), atol=1e-6)
    zero = torch.zeros(1, 2, 40, 64)
    assert torch.equal(symmetry_index_triton(zero, zero, config=SMALL), torch.zeros(1, 2))


def test_the_interpreter_never_takes_the_kernel_in_eager_calls():
    """``eligible`` wants compiled Triton on CUDA: CPU tensors keep the torch path."""
    (q, k), _ = rounded_qk(1, 1, 8, 64, seed=5, dtype=torch.float16)
    assert not eligible(q, k)


def test_a_cached_launcher_in_front_of_the_interpreter_steps_aside(monkeypatch):
    """The interpreter hands back no compiled kernel: a CachedLauncher made anyway (facts
    asked before TRITON_INTERPRET was known) runs every launch through it, results intact."""
    from hopfield_circulation.hopfield import eta_triton
    from hopfield_circulation.hopfield.triton_launch import CachedLauncher

    (q, k), _ = rounded_qk(1, 2, 40, 64, seed=5, dtype=torch.float16)
    want = symmetry_index_triton(q, k, config=SMALL)
    launcher = CachedLauncher(eta_triton._kernel(), eta_triton.ETA_TENSOR_ARGS, enabled=True)
    monkeypatch.setattr(eta_triton, "_launcher", lambda: launcher)
    for _ in range(2):
        torch.testing.assert_close(symmetry_index_triton(q, k, config=SMALL), want,
                                   rtol=0, atol=0)
    assert not launcher.enabled and not launcher.compiled


@pytest.mark.parametrize("d", [64, 128])
def test_torch_compile_calls_the_kernel_as_one_op(monkeypatch, d):
    """Under torch.compile (inductor, fullgraph: no graph break) an eligible call is the
    registered op, which runs the kernel: the eager kernel's eta, bit for bit, on the strided
    views a joint qkv projection gives."""
    from hopfield_circulation.hopfield import eta_triton

    monkeypatch.setattr(eta_triton, "eligible", lambda q, k: True)
    gen = torch.Generator().manual_seed(13)
    qkv = torch.randn(2, 150, 3, 2, d, generator=gen)  # [B, L, 3, H, d]: 150 >= 2d tokens
    q, k = (qkv[:, :, i].transpose(1, 2) for i in range(2))
    assert pack_ops_when_compiled(symmetry_index, q, k) == {"symmetry_index": 1}


def test_the_op_takes_the_torch_path_once_the_kernel_failed(monkeypatch):
    """A graph traced before the kernel failed in this process still calls the op: it then
    gives the torch path's eta."""
    from hopfield_circulation.hopfield import eta_triton
    from hopfield_circulation.hopfield.symmetry import symmetry_index_torch

    (q, k), _ = rounded_qk(1, 2, 140, 64, seed=14, dtype=torch.float32)
    monkeypatch.setattr(eta_triton, "_FAILED", ["out of resource"])
    assert torch.equal(eta_triton.ETA_OP(q, k), symmetry_index_torch(q, k))
