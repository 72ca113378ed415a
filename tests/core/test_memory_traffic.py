"""benchmarks/memory_traffic.py counts right, and the bf16 two-call path makes no fp32 copy of a
head tensor when beta is a number (what its counts rest on), on the meta device: no compute."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from core.tensors_made import TensorsMade

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

SHAPE = (2, 3, 96, 64)  # [B, H, L, d]


def head_tensors(dtype):
    """q, k, v as the host hands them: views [B, H, L, d] of [B, L, H, d]."""
    b, h, length, d = SHAPE
    return tuple(torch.empty(b, length, h, d, device="meta", dtype=dtype).transpose(1, 2)
                 for _ in range(3))


def test_counts_reads_and_writes_of_one_op():
    import memory_traffic

    a, b = (torch.empty(10, 8, device="meta", dtype=torch.float16) for _ in range(2))
    mode = memory_traffic.count(lambda: (a * b, a.view(80), a.mul_(2.0),
                                         torch.mul(a, b, out=torch.empty_like(a))))
    # a * b reads 2 and writes 1 tensor; the view moves nothing; in place reads and writes
    # a; out= reads two and writes its output
    assert mode.ops == [("mul", 480), ("mul_", 320), ("mul", 480)]


def test_attention_is_one_op_of_its_inputs_and_output():
    import memory_traffic

    q, k, v = head_tensors(torch.float16)
    mode = memory_traffic.count(
        lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    assert mode.ops == [("attention", 4 * q.numel() * 2)]


def test_table_runs():
    import memory_traffic

    lines = memory_traffic.table(*SHAPE, torch.bfloat16)
    assert len(lines) == 3 + len(memory_traffic.variants(*head_tensors(torch.bfloat16),
                                                         None))


@pytest.mark.parametrize("beta", [3.0, "tensor"])
def test_bf16_two_call_with_a_number_beta_makes_no_fp32_head_tensor(beta):
    """A number beta: every full-size tensor of the bf16 two-call path is fp16 or bf16 (the
    blend is stored in fp16); a tensor beta blends in fp32."""
    import memory_traffic
    from hopfield_circulation.hopfield.two_call import two_call

    q, k, v = head_tensors(torch.bfloat16)
    if beta == "tensor":
        beta = torch.full((SHAPE[0], 1, 1, 1), 3.0, device="meta")
    with memory_traffic.attention_as_one_op(), TensorsMade() as mode:
        out = two_call(q, k, v, None, 1.05, beta, out_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    fp32 = [op for op, dtype in mode.at_least(torch.Size(SHAPE).numel())
            if dtype == torch.float32]
    assert (fp32 == []) == (not isinstance(beta, torch.Tensor)), fp32
