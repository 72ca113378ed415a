"""Device parameters shared by core tests that also run on a GPU."""

from __future__ import annotations

import pytest
import torch

# A "device" parameter's CUDA case: marked for the GPU tier (pytest tests/gpu tests/core -m gpu)
# and skipped, with the reason, where there is no CUDA device.
ON_CUDA = pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")])
