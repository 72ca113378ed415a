"""benchmarks/gpu_session.sh, read as text: each part fits one command of the device tool.

A lent GPU machine runs one command for at most 600 s and hands back at most 8 files; a part
whose steps' time limits sum past that loses its last steps to the tool's own limit, with
nothing written. Checked here, where no device is needed, before a session spends its
minutes finding out.
"""

from __future__ import annotations

import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_session.sh"
COMMAND_LIMIT_S = 600  # the device tool's per-command limit
SET_UP_S = 40  # the wheels' install, nvidia-smi, Python's start per step
FILES_BACK = 8  # files the device tool hands back per command, gpu.txt among them


def parts() -> dict[str, list[tuple[str, int]]]:
    """part -> [(step name, time limit in s)], from the script's case statement."""
    text = SCRIPT.read_text()
    body = text[text.index('  case $part in'):text.index('  *)\n')]
    found = {}
    for match in re.finditer(r"^  ([a-z0-9_]+)\)\n(.*?)^    ;;", body, re.M | re.S):
        steps = re.findall(r"\bstep (\w+) (\d+) ", match.group(2))
        found[match.group(1)] = [(name, int(limit)) for name, limit in steps]
    return found


def test_every_part_fits_one_device_command():
    found = parts()
    assert {"main", "kernels", "sweeps", "families", "d128", "compiled", "compiled_e2e",
            "compiled_probe"} <= set(found)
    for part, steps in found.items():
        assert steps, part
        assert sum(limit for _, limit in steps) <= COMMAND_LIMIT_S - SET_UP_S, part
        assert len(steps) + 1 <= FILES_BACK, part  # each step's output, and gpu.txt
        names = [name for name, _ in steps]
        assert len(set(names)) == len(names), part


def test_the_header_and_the_refusal_name_every_part():
    text = SCRIPT.read_text()
    header = text[:text.index("set -uo pipefail")]
    documented = set(re.findall(r"gpu_session\.sh (\w+)", header))
    refusal = text[text.index("unknown part"):]
    for part in parts():
        assert part in documented, part
        assert part in refusal, part
    assert documented <= set(parts())


def test_main_and_kernels_fit_a_session_together():
    """The two parts a session sends back to back, with the machine's start, within its 15
    minutes of device time (a cold machine compiles every kernel first)."""
    found = parts()
    both = sum(limit for part in ("main", "kernels") for _, limit in found[part])
    assert both + 2 * SET_UP_S + 60 <= 15 * 60
