"""Never steer (or record) nothing in silence: check, at every model call of a model we patched,
that one of this pack's hooks ran in it and placed its calls in the model's layers.

Three things can keep them from running:

- ComfyUI has one ``optimized_attention_override`` slot per model. Our hook chains whatever was
  there before it, but a node placed *after* ours that writes the slot without chaining (an
  attention-backend node: a Sage or Flash attention patch) switches the steering and the probe
  off.
- ComfyUI's TorchCompileModel (0.5.0 and later) drops every guard on transformer_options, where
  model patches live, and torch.compile shares its graphs between all compiles of one module
  with the same settings. A graph compiled for another model of the same checkpoint, one
  without our patches (the baseline beside a steered run), then runs this model's calls too.
- A pack that runs the model's blocks with its own copy of the model's loop (a step cache:
  TeaCache, First Block Cache) may call them without the options that carry the model's
  patches, so attention never reaches ours; or with them, but without what tells attention
  which block runs (the host's block index, our block replaces), so no call can be placed.

The user would get an unsteered image and a report blaming the sampler. The step wrapper
(schedule.py) keeps a ModelCall for each model call; our hooks set its ``hook_ran`` and, once
they place a call, its ``placed`` (in a compiled graph, through an op that sets both each time
the graph runs), and ``confirm`` raises, saying which happened, when a model with our patches
ran none, or placed none.

All three show in a run's first model call. Later calls may legitimately run no attention at all:
EasyCache skips the diffusion model's computation in calls whose input moved little, handing
back the last computed output shifted by the input's change. So a call that ran none of our
hooks is an error only in a run none of them has reached yet.
"""

from __future__ import annotations

import weakref

import torch

from .host_ops import SINK, register_python_op

OVERRIDE_KEY = "optimized_attention_override"
HOOK_MARK = "hopfield_circulation_hook"  # set on our override functions
COMPILE_WRAPPER = "torch.compile"  # TorchCompileModel's APPLY_MODEL wrapper key (0.3.64 on)
OWN_LOOP = ("A node that runs the model's blocks its own way (a step cache such as TeaCache or "
            "First Block Cache, or another pack's copy of the model's loop)")
TAKE_IT_OFF = ("Fix: take that node off this model's path (ComfyUI's own EasyCache works with "
               "these nodes).")


def mark(override) -> None:
    setattr(override, HOOK_MARK, True)


def is_ours(override) -> bool:
    return getattr(override, HOOK_MARK, False)


def mark_run_in_graph() -> None:
    """In a trace: the op that sets the running ModelCall's ``hook_ran`` and ``placed`` each
    time the graph runs (our hooks put one in a graph, at the first call they place, not one
    per call: each costs host time)."""
    _OP(SINK)


def confirm(call, transformer_options: dict) -> None:
    """After a model call (``call``: its ModelCall): raise when the model carries our patches
    and none of our hooks ran or placed a call, in the run's first model call or any later
    one of a run our hooks have not reached."""
    if not call.patch:
        return
    run = transformer_options.get("sample_sigmas")  # one tensor for a whole sampling run
    if call.placed:
        if run is not None:
            _reached(run)
        return
    if run is not None and _was_reached(run):
        # A later call of a run our hooks reached: its computation was skipped (EasyCache
        # hands back its last output changed by the input's change, from a wrapper around
        # the diffusion model), never a graph or an override that bypasses ours, which would
        # have bypassed them in the run's first call too
        return
    if call.hook_ran:
        raise RuntimeError(
            "Hopfield Circulation: this model's attention reached Skew Circulation / Adaptive "
            "Circulation / Stability Probe, but none of its self-attention calls could be "
            f"placed in a layer, so nothing was steered or recorded. {OWN_LOOP} does not tell "
            "attention which block runs, or another patch changed the tokens of every "
            "self-attention (ToMe or HyperTile on every level: the warnings above name the "
            f"layers). {TAKE_IT_OFF}"
        )
    override = transformer_options.get(OVERRIDE_KEY)
    if is_ours(override):
        wrappers = (transformer_options.get("wrappers") or {}).get("apply_model") or {}
        if COMPILE_WRAPPER not in wrappers:
            raise RuntimeError(
                "Hopfield Circulation: none of this model's attention calls reached Skew "
                "Circulation / Adaptive Circulation / Stability Probe, although its attention "
                f"override is theirs, so nothing was steered or recorded. {OWN_LOOP} calls "
                f"them without the options that carry the model's patches. {TAKE_IT_OFF}"
            )
        raise RuntimeError(
            "Hopfield Circulation: this model ran a compiled graph that was traced for another "
            "model, one without Skew Circulation / Adaptive Circulation / Stability Probe, so "
            "it was neither steered nor recorded. ComfyUI's TorchCompileModel (0.5.0 and "
            "later) does not tell apart models of one checkpoint that differ only in their "
            "patches, and torch.compile reuses a graph across them. Fix: compile only the "
            "models with Hopfield Circulation nodes (take TorchCompileModel off the baseline "
            "beside them); the graph compiled for the baseline lasts until ComfyUI restarts."
        )
    name = "nothing" if override is None else getattr(override, "__qualname__", repr(override))
    raise RuntimeError(
        "Hopfield Circulation: this model's attention override was replaced after Skew "
        f"Circulation / Adaptive Circulation / Stability Probe (it is now {name}), by a node "
        "that does not chain the previous one (an attention-backend node, such as a Sage or "
        "Flash attention patch). Steering and recording would be switched off without a word. "
        "Fix: put the attention-backend node before the Hopfield Circulation nodes on the MODEL "
        "path (the pack chains whatever override it finds)."
    )


# id(the run's sigmas) -> a weak reference to them, for the runs in which one of our hooks ran
_REACHED: dict[int, weakref.ref] = {}


def _reached(run: torch.Tensor) -> None:
    if _was_reached(run):
        return
    if len(_REACHED) >= 64:  # forget finished runs
        for key in [key for key, ref in _REACHED.items() if ref() is None]:
            del _REACHED[key]
    _REACHED[id(run)] = weakref.ref(run)


def _was_reached(run: torch.Tensor) -> bool:
    known = _REACHED.get(id(run))
    return known is not None and known() is run


def _hook_ran(sink) -> None:
    """The op, each time a graph with our hooks runs (traced where they placed a call)."""
    from .schedule import running_call  # here: schedule imports this module

    call = running_call()
    if call is not None:
        call.hook_ran = call.placed = True


_OP = register_python_op("hook_ran", "(Tensor(a!) sink) -> ()", _hook_ran, lambda sink: None)
