"""Skew Circulation and Adaptive Circulation: MODEL -> MODEL patches (paper section 5, 6.1)."""

from __future__ import annotations

from comfy_api.latest import io

from ..circulation import patch_circulation
from ..hopfield import CirculationSettings
from ..vocabulary import FEATURE_SPACES, STEER_BRANCHES

CATEGORY = "Hopfield Circulation/circulation"


def _shared_inputs(alpha: float, beta: float) -> list:
    return [
        io.Model.Input("model", tooltip="The diffusion model to steer (SDXL, SD1.x/2.x or SD3)."),
        io.Float.Input(
            "alpha", default=alpha, min=-4.0, max=4.0, step=0.01, round=0.001,
            tooltip="Circulation scale α: the skew-symmetric part of the attention logits is "
            "multiplied by α. 1 = unchanged model. SDXL: 1.05–1.15 (paper table 3); "
            "SD3: 0.90–0.97 (appendix B.1).",
        ),
        io.Float.Input(
            "beta", default=beta, min=-10.0, max=20.0, step=0.1, round=0.001,
            tooltip="Injection scale β: how far the retrieval moves toward the α-scaled one "
            "(Ξ + β·(Ξ_α − Ξ), then norm-matched). 0 = unchanged model. Paper: 3–7.5.",
        ),
        io.Float.Input(
            "start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
            tooltip="First point of the sampling schedule that is steered (0 = the first step).",
        ),
        io.Float.Input(
            "end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
            tooltip="Last point of the sampling schedule that is steered (1 = the last step).",
        ),
        io.String.Input(
            "layers", default="all",
            tooltip="Which self-attention layers: 'all'; SDXL groups 'down', 'mid', 'up' or the "
            "paper's module index 0–139 (self-attention = even indices; e.g. '0-47, 68-139'); "
            "SD3 'early', 'middle', 'late' or joint-block indices (e.g. '0-11').",
        ),
        io.Combo.Input(
            "branch", options=list(STEER_BRANCHES), default="both",
            tooltip="Which CFG branch is steered: both (as in the paper), only the positive "
            "(cond) or only the negative (uncond) prediction.",
        ),
        io.Combo.Input(
            "space", options=list(FEATURE_SPACES), default="value",
            tooltip="value: blend attention outputs per head (fast, about 3× one attention "
            "call). input: the authors' formulation over the block input, SDXL only, 12–30× "
            "slower; for validation.",
        ),
    ]


def _patched(model, settings, start_percent, end_percent, layers, branch, space):
    return io.NodeOutput(patch_circulation(
        model, settings, start_percent=start_percent, end_percent=end_percent, layers=layers,
        branch=branch, space=space,
    ))


MODEL_OUT = io.Model.Output(tooltip="The model with circulation control on its self-attention.")


class SkewCirculation(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HopfieldCirculation_SkewCirculation",
            display_name="Skew Circulation",
            category=CATEGORY,
            description=(
                "Scales the skew-symmetric (circulation) part of self-attention by α and blends "
                "the resulting retrieval back with β, per Cho et al., ICML 2026. Moderate values "
                "break metastable mixtures (extra limbs, blended objects); large values disrupt "
                "coherent images. α = 1 or β = 0 leaves the model untouched."
            ),
            inputs=_shared_inputs(alpha=1.05, beta=3.0),
            outputs=[MODEL_OUT],
        )

    @classmethod
    def execute(
        cls, model, alpha, beta, start_percent, end_percent, layers, branch, space
    ) -> io.NodeOutput:
        settings = CirculationSettings(alpha=alpha, beta=beta)
        return _patched(model, settings, start_percent, end_percent, layers, branch, space)


ETA_AGGREGATIONS = {"per sample": True, "per call": False}


class AdaptiveCirculation(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HopfieldCirculation_AdaptiveCirculation",
            display_name="Adaptive Circulation",
            category=CATEGORY,
            description=(
                "Skew Circulation modulated by the attention's symmetry index η_M (paper eq. "
                "36–42): α_eff = 1 + (α − 1)·η̄ and β_eff = β·(1 − η̄). Symmetric, already "
                "stable attention is nudged less. Holds up even at the paper's 'excessive' "
                "setting α = 1.2, β = 5 (table 6)."
            ),
            inputs=[
                *_shared_inputs(alpha=1.2, beta=5.0),
                io.Combo.Input(
                    "eta_aggregation", options=list(ETA_AGGREGATIONS), default="per sample",
                    tooltip="per sample: η̄ averaged over heads for each sample, so cond, "
                    "uncond and batch items steer independently. per call: one η̄ over the "
                    "whole attention call, as in the paper.",
                ),
            ],
            outputs=[MODEL_OUT],
        )

    @classmethod
    def execute(
        cls, model, alpha, beta, start_percent, end_percent, layers, branch, space,
        eta_aggregation,
    ) -> io.NodeOutput:
        if eta_aggregation not in ETA_AGGREGATIONS:
            raise ValueError(f"eta_aggregation must be one of {list(ETA_AGGREGATIONS)}")
        settings = CirculationSettings(
            alpha=alpha, beta=beta, adaptive=True,
            eta_per_sample=ETA_AGGREGATIONS[eta_aggregation],
        )
        return _patched(model, settings, start_percent, end_percent, layers, branch, space)


CIRCULATION_NODES = [SkewCirculation, AdaptiveCirculation]
