"""Never steer (or record) nothing in silence: check, at every model call, that the model's
attention override still reaches this pack's hook.

ComfyUI has one ``optimized_attention_override`` slot per model. Our hook chains whatever was
there before it, but a node placed *after* ours that writes the slot without chaining (an
attention-backend node: a Sage or Flash attention patch) switches the steering and the probe off,
and the user would get an unsteered image and a report blaming the sampler. The step wrapper
(schedule.py) calls ``watch`` before each model call and ``confirm`` after it: an override that
is ours passes at once; any other must have called ours at least once during the model call.
"""

from __future__ import annotations

OVERRIDE_KEY = "optimized_attention_override"
HOOK_MARK = "hopfield_circulation_hook"  # set on our override functions
SEEN_KEY = "hopfield_circulation_hook_seen"  # per model call: did our hook run?


class HookSeen:
    """Set by our hook whenever it runs inside the model call that carries it."""

    __slots__ = ("seen",)

    def __init__(self):
        self.seen = False


def mark(override) -> None:
    setattr(override, HOOK_MARK, True)


def is_ours(override) -> bool:
    return getattr(override, HOOK_MARK, False)


def watch(transformer_options: dict) -> HookSeen | None:
    """Before a model call: None when the slot holds our hook, else a flag our hook will set."""
    if is_ours(transformer_options.get(OVERRIDE_KEY)):
        return None
    transformer_options[SEEN_KEY] = seen = HookSeen()
    return seen


def confirm(seen: HookSeen | None, transformer_options: dict) -> None:
    """After a model call: raise when a replaced override never reached our hook."""
    if seen is None or seen.seen:
        return
    replaced = transformer_options.get(OVERRIDE_KEY)
    name = "nothing" if replaced is None else getattr(replaced, "__qualname__", repr(replaced))
    raise RuntimeError(
        "Hopfield Circulation: this model's attention override was replaced after Skew "
        f"Circulation / Adaptive Circulation / Stability Probe (it is now {name}), by a node "
        "that does not chain the previous one (an attention-backend node, such as a Sage or "
        "Flash attention patch). Steering and recording would be switched off without a word. "
        "Fix: put the attention-backend node before the Hopfield Circulation nodes on the MODEL "
        "path (the pack chains whatever override it finds)."
    )


def note_run(transformer_options: dict) -> None:
    """Called by our hook on every call: tells ``confirm`` that the override reached it."""
    seen = transformer_options.get(SEEN_KEY)
    if seen is not None:
        seen.seen = True
