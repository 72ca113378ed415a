"""What the *_kernel_cases.py modules share: they run only under Triton's CPU interpreter.

tests/core/test_fused_triton.py runs them in a subprocess with TRITON_INTERPRET=1: Triton fixes
interpreted-or-compiled when it is first imported, so the interpreter gets a process of its own
and nothing leaks into GPU use elsewhere in a test session. To run one directly:

    TRITON_INTERPRET=1 python -m pytest tests/core/<name>_kernel_cases.py
"""

from __future__ import annotations

import os

import pytest


def require_interpreter() -> None:
    """Skip the calling module unless Triton's interpreter is on and Triton is installed."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 before Triton is imported (test_fused_triton.py "
                    "runs this module that way)", allow_module_level=True)
    pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
