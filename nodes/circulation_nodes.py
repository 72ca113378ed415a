"""Skew Circulation and Adaptive Circulation: MODEL -> MODEL patches (paper section 5, 6.1)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..circulation import patch_circulation
from ..families import adapter_for
from ..hopfield import CirculationSettings
from ..vocabulary import FEATURE_SPACES, STEER_BRANCHES
from .operating_points import (
    ABSENT,
    ADAPTIVE_POINTS,
    OPERATING_POINTS,
    PAPER_POINT,
    SKEW_POINTS,
    UsedPoint,
    choose_point,
)
from .validation import queue_time_check, raise_titled

CATEGORY = "Hopfield Circulation/circulation"
# Where each circulation node leaves the (alpha, beta) it steers with on its MODEL, so a
# Stability Report of a run can say which circulation was active (copied on every clone).
POINTS_KEY = "hopfield_circulation_points"
UI_KEY = "hopfield_operating_point"


def _shared_inputs(alpha: float, beta: float) -> list:
    return [
        io.Model.Input("model", tooltip="The diffusion model to steer: SDXL, SD1.x/2.x, SD3/SD3.5, "
                       "Flux (Flux.1 dev, schnell, Kontext; Flux.2), Chroma, Qwen-Image, "
                       "Lumina 2, Z-Image, Anima, HiDream (I1, E1), AuraFlow (and Pony V7), "
                       "Krea 2, Mage-Flow or Kandinsky 5 Image."),
        io.Float.Input(
            "alpha", default=alpha, min=-4.0, max=4.0, step=0.01, round=0.001,
            tooltip="Circulation scale α: the skew-symmetric part of the attention logits is "
            "multiplied by α. 1 = unchanged model. SDXL: 1.05–1.15 (paper table 3); "
            "SD3: 0.90–0.97 (appendix B.1). Used with operating_point 'custom α, β'; the "
            "default, the paper's point for the connected model, sets α itself.",
        ),
        io.Float.Input(
            "beta", default=beta, min=-10.0, max=20.0, step=0.1, round=0.001,
            tooltip="Injection scale β: how far the retrieval moves toward the α-scaled one "
            "(Ξ + β·(Ξ_α − Ξ), then norm-matched). 0 = unchanged model. Paper: SDXL 3–7.5, "
            "SD3 2–4. Used with operating_point 'custom α, β'.",
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
            "every DiT (SD3, SD3.5, Flux, Chroma, Qwen-Image, Lumina 2, Z-Image, Anima, HiDream, "
            "AuraFlow, Krea 2, Mage-Flow, Kandinsky 5) 'early', 'middle', 'late' or block "
            "indices (e.g. '0-11'); Flux, Chroma, HiDream and AuraFlow also 'double', "
            "'single'.",
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


def _operating_point_input(points: dict) -> io.Combo.Input:
    described = "; ".join(f"{name.upper()} α {p.alpha:g}, β {p.beta:g}"
                          for name, p in points.items())
    return io.Combo.Input(
        "operating_point", options=list(OPERATING_POINTS), default=PAPER_POINT, optional=True,
        tooltip=f"{PAPER_POINT}: steer with the paper's (α, β) for the connected model "
        f"({described}; UNets such as SD1.x use the SDXL point); the α and β inputs are not "
        "used. custom α, β: steer with the α and β inputs (editing either one selects it). "
        "The node shows the α, β it used after a run.",
    )


def _patched(title, model, settings_for, points, operating_point, alpha, beta, start_percent,
             end_percent, layers, branch, space):
    """Patch ``model`` with the chosen point; errors name the node by its title."""
    try:
        family = adapter_for(model).name if operating_point == PAPER_POINT else None
        used = choose_point(points, operating_point, family, alpha, beta)
        used = UsedPoint(used.alpha, used.beta, used.why, title)
        patched = patch_circulation(
            model, settings_for(used.alpha, used.beta), start_percent=start_percent,
            end_percent=end_percent, layers=layers, branch=branch, space=space,
        )
    except (ValueError, RuntimeError) as exc:
        raise_titled(title, exc)
    options = patched.model_options["transformer_options"]
    # a tuple, not a list: ComfyUI merges transformer_options and extends lists it meets
    options[POINTS_KEY] = (*options.get(POINTS_KEY, ()), used.as_dict())
    return io.NodeOutput(patched, ui={UI_KEY: [used.as_dict()]})


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
            inputs=[*_shared_inputs(alpha=1.05, beta=3.0), _operating_point_input(SKEW_POINTS)],
            outputs=[MODEL_OUT],
        )

    @classmethod
    def validate_inputs(cls, layers, start_percent, end_percent) -> bool | str:
        return queue_time_check(layers, start_percent, end_percent)

    @classmethod
    def execute(
        cls, model, alpha, beta, start_percent, end_percent, layers, branch, space,
        operating_point=ABSENT,
    ) -> io.NodeOutput:
        def settings(a, b):
            return CirculationSettings(alpha=a, beta=b)

        return _patched("Skew Circulation", model, settings, SKEW_POINTS, operating_point,
                        alpha, beta, start_percent, end_percent, layers, branch, space)


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
                _operating_point_input(ADAPTIVE_POINTS),
            ],
            outputs=[MODEL_OUT],
        )

    @classmethod
    def validate_inputs(cls, layers, start_percent, end_percent) -> bool | str:
        return queue_time_check(layers, start_percent, end_percent)

    @classmethod
    def execute(
        cls, model, alpha, beta, start_percent, end_percent, layers, branch, space,
        eta_aggregation, operating_point=ABSENT,
    ) -> io.NodeOutput:
        if eta_aggregation not in ETA_AGGREGATIONS:
            raise ValueError(f"Adaptive Circulation: eta_aggregation must be one of "
                             f"{list(ETA_AGGREGATIONS)}")

        def settings(a, b):
            return CirculationSettings(alpha=a, beta=b, adaptive=True,
                                       eta_per_sample=ETA_AGGREGATIONS[eta_aggregation])

        return _patched("Adaptive Circulation", model, settings, ADAPTIVE_POINTS,
                        operating_point, alpha, beta, start_percent, end_percent, layers,
                        branch, space)


CIRCULATION_NODES = [SkewCirculation, AdaptiveCirculation]
