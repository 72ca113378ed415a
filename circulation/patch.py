"""Patch a model with skew circulation: the handler behind Skew and Adaptive Circulation."""

from __future__ import annotations

import weakref

import torch

from ..families import adapter_for
from ..hook.call import AttentionCall, Steering
from ..hook.layers import select_layers
from ..hook.override import HostBaseline, Steered, install_attention_hook
from ..hook.schedule import (
    PATCH_KEY,
    require_host_sigma,
    sigma_window,
    whole_run,
    window_bounds,
)
from ..hopfield import (
    CirculationResult,
    CirculationSettings,
    circulate_input_space,
    circulate_value_space,
    fused_plan,
    fused_triton,
)
from ..hopfield.circulation import circulate_rows, needs_baseline, use_fused
from ..vocabulary import FEATURE_SPACES, STEER_BRANCHES, FeatureSpace, SteerBranch, check_choice
from .branches import RowMasks, steers_branch


def patch_circulation(
    model_patcher,
    settings: CirculationSettings,
    *,
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    layers: str = "all",
    branch: SteerBranch = "both",
    space: FeatureSpace = "value",
):
    """A clone of ``model_patcher`` whose selected self-attention layers are steered."""
    check_choice("branch", branch, STEER_BRANCHES)
    check_choice("space", space, FEATURE_SPACES)
    adapter = adapter_for(model_patcher)
    adapter.require_space(space)
    m = model_patcher.clone()
    sigma_start, sigma_end = sigma_window(m, start_percent, end_percent)
    selected = select_layers(layers, adapter.layer_map)
    input_space = adapter.input_space(m) if space == "input" else None
    if settings.is_identity:  # alpha = 1 or beta = 0: the model runs unpatched
        return m
    window = window_bounds(sigma_start, sigma_end)
    windowed = not whole_run(start_percent, end_percent)
    if windowed:  # else the model calls never wait for the device (schedule.py)
        require_host_sigma(m, window)

    masks = RowMasks(branch)
    kernel = settings.kernel
    # Static settings on every row: the same Steering for every call.
    everywhere = Steering(space, settings.alpha, settings.beta, settings.norm_match, None)
    # The fused path: each call layout's launches prepared once (hopfield/fused_plan.py)
    plans = fused_plan.LayoutPlans(_plan_maker(settings)) \
        if input_space is None and kernel != "two_call" else None

    def steer(call: AttentionCall, baseline: HostBaseline) -> Steered | None:
        settings = _SETTINGS[patch]  # a graph's constants (_SETTINGS)
        # Cheapest refusals first: every attention call of the model comes through here.
        if call.layer.index not in selected:
            return None
        if windowed and not call.step_info.in_window(window):
            return None
        if not steers_branch(call, branch):
            return None  # no chunk of the steered branch in this call (cfg 1, split calls)
        active, run = masks(call)
        if input_space is None:
            # A planned layout launches at once, on the host's tensors as they are, and hands
            # its output back in the host's layout (a chained earlier override must see every
            # call: those take the general path, which runs it)
            layout = None
            if plans is not None and not baseline.chained and not torch.compiler.is_compiling():
                layout = plans.layout(call.host_q, call.host_k, call.host_v, call.heads,
                                      call.host_heads_first, call.output_heads_first,
                                      tuple(call.cond_or_uncond))
                planned = plans.get(layout)
                if planned is not None:
                    plan, steering = planned
                    got = plan.run(call.host_q, call.host_k, call.host_v, active,
                                   call.v if plan.v16 else None)
                    if got is not None and not settings.adaptive:
                        return Steered(got, steering, host_layout=True)
                    if got is not None:
                        out, scratch = got
                        return Steered(out, lambda: _adaptive_steering(
                            space, plan.coefficient_rows(scratch), settings.norm_match, active),
                            host_layout=True)
            q, k, v = call.q, call.k, call.v
            fused = use_fused(q, k, v, kernel)
            if run is not None and not fused and not settings.adaptive:
                # One branch on the two-call path: compute only its rows.
                out = circulate_rows(q, k, v, baseline.heads(call.heads), settings, run)
                result = CirculationResult(out, None, settings.alpha, settings.beta)
            else:
                wanted = baseline.chained or needs_baseline(q, k, v, settings, active, fused)
                base = baseline.heads(call.heads) if wanted else None  # fused: no host call
                result = circulate_value_space(q, k, v, base, settings, active, fused=fused)
                if fused and layout is not None:  # plan the layout, with its static Steering
                    plans.learn(layout, q, k, v, active, None if settings.adaptive else
                                everywhere if active is None else
                                Steering(space, settings.alpha, settings.beta,
                                         settings.norm_match, active), call.to_host)
        else:
            result = _steer_input_space(input_space, call, baseline.heads(call.heads),
                                        settings, active)
        if settings.adaptive or active is not None:
            return Steered(result.out, Steering(space, result.alpha, result.beta,
                                                settings.norm_match, active))
        return Steered(result.out, everywhere)

    install_attention_hook(m, steer, adapter)
    patch = m.model_options["transformer_options"][PATCH_KEY]
    _SETTINGS[patch] = settings
    weakref.finalize(steer, _SETTINGS.pop, patch, None)  # the clones of m hold steer
    fused_triton.settle(torch.device(getattr(m, "load_device", "cpu")))
    return m


# Each steered model's settings by its patch number (hook/schedule.PATCH_KEY), which is where the
# steering reads them, for as long as the steering lives. Read through the model's own closure,
# alpha and beta were the same source (a path through transformer_options) in every model: once
# dynamo had seen two values there, it made them inputs of the graph, and inductor's FX graph cache
# then handed a model the graph compiled for another alpha (a step window after a run with another
# alpha: 0.09 from eager on tiny SDXL). Here each model's are a source of their own, constants in
# its graph, which the patch number's guard keeps to that model.
_SETTINGS: dict[int, CirculationSettings] = {}


def _adaptive_steering(space: FeatureSpace, coefficients: tuple, norm_match: bool,
                       active: torch.Tensor | None) -> Steering:
    """What an adaptive planned call applied, from the coefficients its kernel wrote
    (eta-bar, alpha_eff, beta_eff)."""
    _, alpha, beta = coefficients
    return Steering(space, alpha, beta, norm_match, active)


def _plan_maker(settings: CirculationSettings):
    """What plans a layout's fused launches for these settings (hopfield/fused_plan.py)."""
    if settings.adaptive:
        return lambda q, k, v, active, to_host: fused_plan.make_adaptive_plan(
            q, k, v, settings.alpha, settings.beta, settings.eta_per_sample,
            settings.norm_match, active, to_host)
    return lambda q, k, v, active, to_host: fused_plan.make_skew_plan(
        q, k, v, settings.alpha, settings.beta, settings.norm_match, active, to_host)


def _steer_input_space(input_space, call, base, settings, active):
    """The authors' formulation over the block input X, projected by the layer's own W_v."""
    options = call.transformer_options
    x = input_space.block_input(options)
    if x.shape[:2] != (call.batch, call.k.shape[-2]):
        raise RuntimeError(
            f"input space: attn1's input X {tuple(x.shape)} does not match its keys "
            f"{tuple(call.k.shape)} (another node changes attn1's values); use space='value'"
        )
    w_v, b_v = input_space.value_projection(options, x)
    return circulate_input_space(call.q, call.k, x, w_v, b_v, base, settings, active)
