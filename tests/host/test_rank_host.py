"""Stability Rank on a probed batch of the tiny models: the order the report's own values give."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def batch(comfy_host):
    from hopfield_circulation.nodes import probe_nodes
    from host import tiny_models

    model = tiny_models.tiny_sdxl()
    probed, handle = probe_nodes.StabilityProbe.execute(model, "value", 64, 0.0, 1.0, "both",
                                                        "all").result
    latent = tiny_models.sample_sdxl(probed, batch=4)
    return handle, latent


def rank(handle, latent, block="all", order="most stable first", k=2, image=None):
    from hopfield_circulation.nodes.rank_node import StabilityRank

    return StabilityRank.execute(handle, {"samples": latent}, block, order, k, image=image)


@pytest.mark.parametrize("block, group", [("all", "all"), ("down / early", "down"),
                                          ("up / late", "up")])
def test_ranks_by_the_reports_own_align_of_the_cond_branch(batch, block, group):
    from hopfield_circulation.probe import find_run, probe_state
    from hopfield_circulation.probe.summary import summarise

    handle, latent = batch
    summary = summarise(probe_state(handle), find_run(handle, latent))
    g = summary.groups.index(group)
    cond = {row: float(summary.group_values[s, g, 2])
            for s, (branch, row) in enumerate(summary.sample_keys) if branch == 0}
    want = sorted(cond, key=cond.get, reverse=True)
    out = rank(handle, latent, block=block, k=2)
    kept, image, text = out.result
    assert torch.equal(kept["samples"], latent[want[:2]])
    assert image is None and f"sample {want[0]}" in text.splitlines()[1]
    least = rank(handle, latent, block=block, order="least stable first", k=4).result[0]
    assert torch.equal(least["samples"], latent[want[::-1]])


def test_images_follow_the_samples_and_bad_input_is_named(batch):
    handle, latent = batch
    images = torch.rand(4, 8, 8, 3)
    kept, picked, _ = rank(handle, latent, k=3, image=images).result
    order = [int((latent == s).all(dim=(1, 2, 3)).nonzero()) for s in kept["samples"]]
    assert torch.equal(picked, images[order])
    with pytest.raises(ValueError, match="Stability Rank: the image batch has 2"):
        rank(handle, latent, image=images[:2])
    with pytest.raises(RuntimeError, match="Stability Rank: .*did not come from"):
        rank(handle, torch.zeros_like(latent))
