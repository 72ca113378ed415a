"""Stability Probe (records during sampling) and Stability Report (shows and saves it)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from comfy_api.v0_0_2 import io, ui

from ..probe import ProbeSettings, build_report, patch_probe, probe_state
from ..vocabulary import FEATURE_SPACES, PROBE_BRANCHES
from .circulation_nodes import POINTS_KEY
from .validation import queue_time_check, raise_titled

CATEGORY = "Hopfield Circulation/diagnostics"
Probe = io.Custom("HOPFIELD_PROBE")
POINTS_WRAPPER_KEY = "hopfield_circulation_probe_points"

# (probe id, run number) -> the (alpha, beta) of every circulation node on the sampled model,
# for the report's text; bounded like the probes' own registry.
_RUN_POINTS: OrderedDict[tuple[str, int], list[dict]] = OrderedDict()
_RUN_POINTS_KEPT = 512
_RUN_POINTS_LOCK = threading.Lock()


def _remember_points(handle):
    """OUTER_SAMPLE wrapper: note which circulation points the sampled model carries, for the
    probe's run of this sampling (the recorder numbers the runs; this only reads them)."""

    def remember_circulation_points(executor, *args, **kwargs):
        try:
            state = probe_state(handle)
        except (RuntimeError, TypeError):  # dropped from the registry: nothing to note
            return executor(*args, **kwargs)
        before = state.runs_started
        guider = getattr(executor, "class_obj", None)
        options = getattr(guider, "model_options", None)
        if options is None:
            options = getattr(getattr(guider, "model_patcher", None), "model_options", {})
        points = list(options.get("transformer_options", {}).get(POINTS_KEY, []))
        # inside the recorder's wrapper (added first, so outside this one) the run is open;
        # outside it, the run opens inside
        current = state.current
        number = current.number if current is not None and not current.finished else before + 1
        with _RUN_POINTS_LOCK:
            _RUN_POINTS[(handle.probe_id, number)] = points
            while len(_RUN_POINTS) > _RUN_POINTS_KEPT:
                _RUN_POINTS.popitem(last=False)
        return executor(*args, **kwargs)

    return remember_circulation_points


def _points_of(handle, run) -> list[dict]:
    with _RUN_POINTS_LOCK:
        return _RUN_POINTS.get((getattr(handle, "probe_id", None), run.number), [])


class StabilityProbe(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HopfieldCirculation_StabilityProbe",
            display_name="Stability Probe",
            category=CATEGORY,
            description=(
                "Records the paper's Hopfield stability measures (energy E_X, instability "
                "fraction r_X, alignment Align_X, symmetry η_M and the per-token map λ_X) on "
                "the sampler's own passes, without changing the image. Place it anywhere on the "
                "MODEL path, before or after circulation nodes; read it with Stability Report."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to probe: SDXL, SD1.x/2.x, SD3/SD3.5, "
                               "Flux, Chroma, Qwen-Image, Lumina 2, Z-Image, Anima, "
                               "HiDream, AuraFlow, Krea 2, Mage-Flow or Kandinsky 5 "
                               "Image."),
                io.Combo.Input(
                    "basis", options=list(FEATURE_SPACES), default="value",
                    display_name="basis (value: attention output, input: block input X)",
                    tooltip="value: features are the attention output's channels per head "
                    "(any model, cheap). input: the paper's basis, the retrieval over the block "
                    "input X (SDXL only; see channels).",
                ),
                io.Int.Input(
                    "channels", default=64, min=0, max=4096,
                    display_name="channels (input basis only)",
                    tooltip="Used only with basis = input (ignored with value): how many of "
                    "the block input's channels to probe (a fixed random subset, for speed); "
                    "0 = all channels, the exact value.",
                ),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="First point of the schedule that is recorded."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Last point of the schedule that is recorded."),
                io.Combo.Input(
                    "branch", options=list(PROBE_BRANCHES), default="cond",
                    tooltip="Which CFG branch to record: the positive prediction (cond, as in "
                    "the paper), the negative one, or both (reported separately).",
                ),
                io.String.Input(
                    "layers", default="all",
                    tooltip="Layers to record, same syntax as the circulation nodes: 'all', "
                    "'down'/'mid'/'up' or the paper's 0–139 index (SDXL), 'early'/'middle'/"
                    "'late' or block indices (SD3, SD3.5, Flux, Chroma, Qwen-Image, Lumina 2, "
                    "Z-Image, Anima, HiDream, AuraFlow, Krea 2, Mage-Flow, Kandinsky 5; Flux, "
                    "Chroma, HiDream and AuraFlow also 'double', 'single').",
                ),
            ],
            outputs=[
                io.Model.Output(tooltip="The same model, now recording; connect it to the "
                                "sampler."),
                Probe.Output(display_name="probe", tooltip="Handle to the recordings; connect "
                             "it to Stability Report."),
            ],
        )

    @classmethod
    def validate_inputs(cls, layers, start_percent, end_percent) -> bool | str:
        return queue_time_check(layers, start_percent, end_percent, what="recorded")

    @classmethod
    def execute(cls, model, basis, channels, start_percent, end_percent, branch,
                layers) -> io.NodeOutput:
        try:
            settings = ProbeSettings(basis, channels, start_percent, end_percent, branch,
                                     layers)
            probed, handle = patch_probe(model, settings)
        except (ValueError, RuntimeError) as exc:
            raise_titled("Stability Probe", exc)
        from comfy.patcher_extension import WrappersMP

        probed.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, POINTS_WRAPPER_KEY,
                                    _remember_points(handle))
        return io.NodeOutput(probed, handle)


class StabilityReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HopfieldCirculation_StabilityReport",
            display_name="Stability Report",
            category=CATEGORY,
            description=(
                "Shows what a Stability Probe recorded for the sampler that produced LATENT: "
                "λ_X heatmaps (red = conflict, blue = reinforcement), their overlay on the "
                "image, Align_X per block, a per-layer chart and a text report; optionally "
                "saves every series to a .safetensors file in the output folder."
            ),
            inputs=[
                Probe.Input("probe", tooltip="The probe output of a Stability Probe."),
                io.Latent.Input("latent", tooltip="The LATENT of the sampler that used the "
                                "probed model (also makes this node run after it)."),
                io.Image.Input("image", optional=True, tooltip="Optional decoded image of "
                               "that LATENT, for the overlay."),
                io.Boolean.Input("save_file", default=False, tooltip="Also write the "
                                 "per-layer, per-step series and maps as .safetensors."),
                io.String.Input("filename_prefix", default="hopfield/stability",
                                tooltip="Where the .safetensors file goes, under ComfyUI's "
                                "output folder."),
            ],
            outputs=[
                io.Image.Output(display_name="heatmaps", tooltip="λ_X maps per sample and "
                                "block group (Down, Mid, Up, All; SD3: early, middle, late, "
                                "All): red where retrieval conflicts with its field."),
                io.Image.Output(display_name="overlay", tooltip="The heatmaps over the image "
                                "(the heatmaps alone when no image is given)."),
                io.Float.Output(display_name="align_down", tooltip="Align_X of the Down "
                                "blocks (SD3: early third), first sample."),
                io.Float.Output(display_name="align_mid", tooltip="Align_X of the Mid block "
                                "(SD3: middle third), first sample."),
                io.Float.Output(display_name="align_up", tooltip="Align_X of the Up blocks "
                                "(SD3: late third), first sample."),
                io.Float.Output(display_name="align_all", tooltip="Align_X over all probed "
                                "layers, first sample."),
                io.String.Output(display_name="report", tooltip="E_X, r_X, Align_X and η_M "
                                 "per block and sample, as text."),
            ],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, probe, latent, save_file, filename_prefix, image=None) -> io.NodeOutput:
        try:
            report = build_report(probe, latent["samples"], image,
                                  filename_prefix if save_file else None,
                                  circulation_of=lambda run: _points_of(probe, run))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise_titled("Stability Report", exc)
        shown = report.overlay if image is not None else report.heatmaps
        preview = ui.PreviewImage(shown, cls=cls).as_dict()
        ui_payload = {**preview, "hopfield_align_chart": [report.chart], "text": [report.text],
                      "hopfield_report_table": [report.table]}
        align = report.align
        return io.NodeOutput(report.heatmaps, report.overlay, align["down"], align["mid"],
                             align["up"], align["all"], report.text, ui=ui_payload)


PROBE_NODES = [StabilityProbe, StabilityReport]
