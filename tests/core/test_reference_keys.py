"""The references' queries kept for calls whose keys a cache supplies (families/reference_keys.py):
pure torch on the call options the host hands attention; the host tier samples with FluxKVCache
(tests/host/test_reference_cache.py)."""

from __future__ import annotations

import pytest
import torch
from hopfield_circulation.families import reference_keys as rk

TEXT, IMAGE, REFS = 5, 12, (6, 3)  # a [text; image; two references] sequence


def options(store, block=("double", 1), attn1=True, refs=REFS):
    patches = {rk.STORE_NAME: [store]} if store is not None else {}
    if attn1:
        patches["attn1_patch"] = [object()]
    return {"patches": patches, "block_type": block[0], "block_index": block[1],
            rk.REFERENCE_TOKENS_KEY: list(refs)}


def full_and_cached(batch=2, heads=3, d=8):
    """The block's full call's q, then a later call's q and k, the references' keys cached."""
    gen = torch.Generator().manual_seed(0)
    full = torch.randn(batch, heads, TEXT + IMAGE + sum(REFS), d, generator=gen)
    q = torch.randn(batch, heads, TEXT + IMAGE, d, generator=gen)
    k = torch.randn(batch, heads, TEXT + IMAGE + sum(REFS), d, generator=gen)
    return full, q, k


def test_a_cached_call_gets_the_references_queries_of_its_blocks_full_call():
    store = rk.ReferenceQueries()
    full, q, k = full_and_cached()
    rk.remember(options(store), full, sum(REFS))
    kept = store.by_block[("double", 1)]
    assert kept.shape[2] == sum(REFS) and kept.is_contiguous()  # a copy of those rows only
    full.zero_()  # the host's tensor is free to go
    extended = rk.with_cached_queries(options(store), q, k)
    assert extended.shape == k.shape
    assert torch.equal(extended[:, :, :TEXT + IMAGE], q)
    assert torch.equal(extended[:, :, TEXT + IMAGE:], kept)
    # another block's call finds nothing of this one's
    with pytest.raises(RuntimeError, match=r"FluxKVCache.*their queries"):
        rk.with_cached_queries(options(store, block=("single", 1)), q, k)


def test_nothing_is_kept_without_a_store_a_block_or_an_attn1_patch():
    full, _, _ = full_and_cached()
    for opts in (options(rk.ReferenceQueries(), attn1=False),
                 {**options(rk.ReferenceQueries()), "block_type": None}):
        rk.remember(opts, full, sum(REFS))
        assert opts["patches"][rk.STORE_NAME][0].by_block == {}
    rk.remember(options(None), full, sum(REFS))  # no store: nothing to keep it in


def test_other_calls_with_fewer_queries_are_not_taken_for_cached_ones():
    store = rk.ReferenceQueries()
    full, q, k = full_and_cached()
    rk.remember(options(store), full, sum(REFS))
    assert rk.with_cached_queries(options(store, refs=()), q, k) is None  # no references
    assert rk.with_cached_queries(options(store), q, k[:, :, :-1]) is None  # another count
    assert rk.with_cached_queries(options(store), q[:, :, :4], k) is None  # a cross-attention


def test_a_cached_call_whose_queries_were_never_seen_stops_with_the_reason():
    _, q, k = full_and_cached()
    for store in (None, rk.ReferenceQueries()):
        with pytest.raises(RuntimeError, match="Update ComfyUI, or take FluxKVCache off"):
            rk.with_cached_queries(options(store), q, k)


def test_cleanup_forgets_the_run():
    store = rk.ReferenceQueries()
    full, _, _ = full_and_cached()
    rk.remember(options(store), full, sum(REFS))
    store.cleanup()
    assert store.by_block == {}
