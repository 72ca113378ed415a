"""Kernel launches and bytes moved per call of the paths without Triton, on any machine.

    python benchmarks/memory_traffic.py               # SDXL 64x64 and SD3 1024² self-attention
    python benchmarks/memory_traffic.py --tokens 1024 --heads 10 --batch 2

The two-call path (Windows without triton-windows, ROCm, MPS) is two attention calls and a
few elementwise passes; apart from the attention calls themselves its cost on a GPU is the
passes' memory traffic and their launches. Both are counted here, not timed: the path runs on
the meta device (shapes only, no data, no GPU), as an accelerator would run it (fp16 compute
for bf16), and a dispatch mode records every aten op that is not a view, the bytes of each
tensor it reads and writes (an in-place op's tensor both), and how many of its reads and
writes are the attention calls'. Bytes are per element of one [B, H, L, d] head tensor, so
that the paths compare across shapes; a GPU reads and writes at least that much per call (its
caches aside), and each op is at least one launch.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_attention import _import_core  # noqa: E402

hopfield = _import_core()
from hopfield_circulation.hopfield.two_call import two_call  # noqa: E402


class CountTraffic(TorchDispatchMode):
    """Launches and bytes of every non-view op run under it."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, int]] = []  # (op name, bytes read and written)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._schema.name.removeprefix("aten::")
        written = {id(t): t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)}
        # views move nothing, allocations launch nothing, dtype queries return no tensor
        if written and not _is_view(func) and not name.startswith("empty"):
            in_place = name.endswith("_")  # reads the tensor it writes back; out= only writes
            read = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
                    and (in_place or id(t) not in written)]
            self.ops.append((name, sum(map(_bytes, read)) + sum(map(_bytes, written.values()))))
        return out


def _is_view(func) -> bool:
    return any(ret.alias_info is not None and not ret.alias_info.is_write
               for ret in func._schema.returns)


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def count(fn) -> CountTraffic:
    """The ops of fn(), each attention call as one op (attention_as_one_op)."""
    mode = CountTraffic()
    with attention_as_one_op(lambda moved: mode.ops.append(("attention", moved))), mode:
        fn()
    return mode


@contextlib.contextmanager
def attention_as_one_op(record=lambda moved: None):
    """F.scaled_dot_product_attention as a GPU's flash kernels run it: one op that reads q, k
    and v and writes its output (on the meta device torch would decompose it into the L x L
    products of its math path, in fp32). ``record`` gets the bytes each call moves. For this
    script and tests on meta tensors only: it replaces the function for the process."""
    sdpa = F.scaled_dot_product_attention

    def fused_attention(q, k, v, *args, **kwargs):
        out = torch.empty((*q.shape[:-1], v.shape[-1]), dtype=q.dtype, device=q.device)
        record(sum(map(_bytes, (q, k, v, out))))
        return out

    F.scaled_dot_product_attention = fused_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


def variants(q, k, v, base):
    """name -> a call of the two-call path with these inputs (meta tensors)."""
    tensor_beta = torch.full((q.shape[0], 1, 1, 1), 3.0, device=q.device)
    return {
        "Skew Circulation (alpha, beta numbers)": lambda: two_call(
            q, k, v, base, 1.05, 3.0, out_dtype=q.dtype),
        "beta a tensor": lambda: two_call(
            q, k, v, base, 1.05, tensor_beta, out_dtype=q.dtype),
        "Adaptive's form (alpha, beta tensors)": lambda: two_call(
            q, k, v, base, torch.full_like(tensor_beta, 1.05), tensor_beta,
            out_dtype=q.dtype),
    }


def table(batch, heads, tokens, d, dtype) -> list[str]:
    q, k, v = (torch.empty(batch, tokens, heads, d, device="meta", dtype=dtype).transpose(1, 2)
               for _ in range(3))  # the host's [B, L, H, d] layout, as views [B, H, L, d]
    base = torch.empty(batch, heads, tokens, d, device="meta", dtype=dtype)
    elements = q.numel()
    name = str(dtype).removeprefix("torch.")
    lines = [f"two-call path, {name}, [B, H, L, d] = [{batch}, {heads}, {tokens}, {d}] "
             "(bytes per element of one such tensor)",
             "| variant | ops (launches) | bytes / element | of which the attention calls |",
             "|---|---:|---:|---:|"]
    for label, fn in variants(q, k, v, base).items():
        mode = count(fn)
        moved = sum(b for _, b in mode.ops)
        attention = sum(b for op, b in mode.ops if op == "attention")
        lines.append(f"| {label} | {len(mode.ops)} | {moved / elements:.1f} | "
                     f"{attention / elements:.1f} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--head-dim", type=int, default=64)
    cli = parser.parse_args()
    shapes = [(2, 10, 4096, 64), (2, 24, 4250, 64)]  # SDXL 64x64 (CFG), SD3 1024² joint
    if cli.batch or cli.heads or cli.tokens:
        shapes = [(cli.batch or 2, cli.heads or 10, cli.tokens or 4096, cli.head_dim)]
    print(f"torch {torch.__version__}; meta device: counted, not run. Ops: every aten op but "
          "views and allocations, each attention call one op. bf16 computes in fp16 and, with "
          "a number beta, stores the blend in fp16; the other rows blend in fp32.")
    for shape in shapes:
        for dtype in (torch.bfloat16, torch.float16):
            print()
            print("\n".join(table(*shape, dtype)))


if __name__ == "__main__":
    main()
