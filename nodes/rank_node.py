"""Stability Rank: keep the most (or least) stable samples of a probed batch."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io, ui

from ..probe.rank import BLOCKS, ORDERS, rank_samples
from .probe_nodes import CATEGORY, Probe
from .validation import raise_titled

TITLE = "Stability Rank"


class StabilityRank(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HopfieldCirculation_StabilityRank",
            display_name=TITLE,
            category=CATEGORY,
            description=(
                "Orders the samples of a probed batch by their Hopfield alignment Align_X (the "
                "value the Stability Report shows) and keeps the first k: generate 8 seeds and "
                "keep the 2 most coherent, or the least stable ones to look for diversity. "
                "Stable retrieval (high Align_X) went with coherent images in the paper "
                "(table 2)."
            ),
            inputs=[
                Probe.Input("probe", tooltip="The probe output of the Stability Probe on the "
                            "model that sampled this batch."),
                io.Latent.Input("latent", tooltip="The batch the sampler produced with the "
                                "probed model."),
                io.Image.Input("image", optional=True, tooltip="Optional decoded images of "
                               "that batch (same order), to keep the same samples as images."),
                io.Combo.Input("block", options=list(BLOCKS), default="all",
                               tooltip="Which blocks' Align_X ranks the samples: all probed "
                               "layers, or the Down / Mid / Up blocks (SDXL; DiTs: the early / "
                               "middle / late thirds)."),
                io.Combo.Input("order", options=list(ORDERS), default=ORDERS[0],
                               tooltip="most stable first: highest Align_X first (coherent). "
                               "least stable first: lowest first (metastable, more diverse)."),
                io.Int.Input("k", default=2, min=1, max=4096,
                             tooltip="How many samples to keep (all of them, reordered, when k "
                             "exceeds the batch)."),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The first k samples of the "
                                 "ranking, in ranked order."),
                io.Image.Output(display_name="image", tooltip="The same samples from the image "
                                "input (empty without one)."),
                io.String.Output(display_name="scores", tooltip="Every sample's Align_X and its "
                                 "place in the ranking, as text."),
            ],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, probe, latent, block, order, k, image=None) -> io.NodeOutput:
        try:
            ranking = rank_samples(probe, latent["samples"], block, order)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise_titled(TITLE, exc)
        keep = torch.tensor(ranking.order[:k])
        kept = {**latent, "samples": latent["samples"].index_select(0, keep)}
        for name in ("noise_mask", "batch_index"):  # per-sample extras follow the samples
            value = latent.get(name)
            if isinstance(value, torch.Tensor) and value.shape[:1] == latent["samples"].shape[:1]:
                kept[name] = value.index_select(0, keep)
            elif isinstance(value, list) and len(value) == latent["samples"].shape[0]:
                kept[name] = [value[i] for i in keep.tolist()]
        images = None
        if image is not None:
            if image.shape[0] != latent["samples"].shape[0]:
                raise ValueError(f"{TITLE}: the image batch has {image.shape[0]} images, the "
                                 f"latent {latent['samples'].shape[0]} samples")
            images = image.index_select(0, keep.to(image.device))
        text = ranking.text(min(k, len(ranking.order)))
        return io.NodeOutput(kept, images, text, ui=ui.PreviewText(text))


RANK_NODES = [StabilityRank]
