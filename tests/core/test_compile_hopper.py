"""benchmarks/compile_hopper.py reads the fused kernel's key loop off its SASS: the innermost
loop with the most exponentials, not a backward jump that spans several loops (Triton 3.9
puts its reductions' divergent-warp paths after the exit and jumps back from there)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import compile_hopper  # noqa: E402


def sass(*lines: str) -> str:
    """cuobjdump's layout: /*address*/ instruction ; /* encoding */, 16 bytes apart."""
    return "\n".join(f"        /*{16 * i:04x}*/   {text} ;   /* 0x0 */"
                     for i, text in enumerate(lines))


def test_the_key_loop_is_the_innermost_loop_with_the_most_exponentials():
    code = sass(
        "MOV R1, R2",
        "MUFU.EX2 R3, R4",  # 0x10: the key loop, two exponentials, a spill
        "MUFU.EX2 R5, R6",
        "@P0 STL [R1], R3",
        "FFMA R7, R3, R5, R7",
        "@!P1 BRA 0x10",  # 0x50: closes it
        "MUFU.EX2 R8, R9",  # 0x60: a loop with one exponential
        "@!P2 BRA 0x60",
        "EXIT",
        "BRA.DIV UR4, 0x90",
        "BRA 0x0",  # 0xa0: back to the start, across both loops: no loop
    )
    assert compile_hopper.main_loop(code) == {"loop": 5, "loop_fp32": 1, "loop_spill": 1}


def test_a_kernel_without_loops_has_none():
    assert compile_hopper.main_loop(sass("MUFU.EX2 R1, R2", "EXIT")) == {
        "loop": 0, "loop_fp32": 0, "loop_spill": 0}
