"""Where a piece of work made the host wait for the device, from torch's sync debug mode (it
flags the synchronising CUDA calls: item and tolist, blocking copies, explicit waits). Shared by
the GPU tier and benchmarks/bench_e2e_gpu.py."""

from __future__ import annotations

import warnings

import torch


def host_syncs(run) -> list[str]:
    """``file:line`` of every host synchronisation while ``run()`` ran (CUDA only)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
