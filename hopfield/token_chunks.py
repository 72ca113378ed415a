"""How a kernel that sums over tokens splits them among programs (the probe's kernels; eta's
when asked).

One program per (sample, head) walking every token itself gives a call batch x heads programs:
20 at SDXL's 64 x 64 level with CFG, on a GPU with 132 processors. Splitting the tokens into
chunks of whole tiles fills the chip; a second launch then sums the chunks' shares in a fixed
order (the same bits every run). How many chunks comes from the probe's sweep on an H200
(benchmarks/bench_gpu.py --sweep; the README has the table): about two programs per
processor, but no chunk much under CHUNK_TOKENS tokens (shorter ones measured slower). That
rule picks the fastest count measured at SDXL's 64 x 64 and 32 x 32 levels and SD3's 1024².
"""

from __future__ import annotations

import torch

_processors: dict = {}  # CUDA device index -> streaming multiprocessors


def processors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (read once); 1 elsewhere (the interpreter:
    one chunk unless a test asks for more)."""
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _processors:
        _processors[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _processors[index]


PROGRAMS_PER_PROCESSOR = 2
CHUNK_TOKENS = 600


def token_chunks(programs: int, length: int, block_l: int, device: torch.device,
                 splits: int | None = None) -> tuple[int, int]:
    """(chunks, tokens per chunk): about PROGRAMS_PER_PROCESSOR programs per processor for
    ``programs`` programs per chunk, about CHUNK_TOKENS tokens or more per chunk, whole tiles
    of ``block_l`` tokens, no empty chunk. ``splits`` asks for that many chunks (at most one
    per tile)."""
    tiles = -(-length // block_l)
    fill = -(-PROGRAMS_PER_PROCESSOR * processors(device) // programs)
    wanted = splits or min(fill, max(1, round(length / CHUNK_TOKENS)))
    per_chunk = -(-tiles // max(1, min(wanted, tiles)))
    return -(-tiles // per_chunk), per_chunk * block_l
