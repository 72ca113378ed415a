"""What the nodes check when a prompt is queued, and how run-time errors name the node.

ComfyUI calls a V3 node's ``validate_inputs`` while it validates a prompt, before anything runs;
a string it returns refuses the prompt with a node error. What needs no model is checked there:
a `layers` setting that cannot be read and a step window that runs backwards or leaves 0..1.
What depends on the connected model (an index past its last layer, a group it lacks) is checked
when the node runs, and the message then starts with the node's title.

Inputs fed by a link arrive as None at queue time: their values are checked when the node runs.
"""

from __future__ import annotations

from ..families import layer_names
from ..hook.layers import parse_layer_tokens


def layers_error(layers) -> str | None:
    """Why a `layers` setting cannot be read on any model, or None."""
    if layers is None:  # linked: checked at run time
        return None
    try:
        parse_layer_tokens(str(layers), layer_names())
    except ValueError as exc:
        return str(exc)
    return None


def window_error(start_percent, end_percent, what: str = "steered") -> str | None:
    """Why a step window is unusable, or None; the run-time messages (hook/schedule.py)."""
    for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
        if value is not None and not 0.0 <= float(value) <= 1.0:
            return f"{name} must be between 0 and 1, got {value}"
    if start_percent is not None and end_percent is not None and start_percent > end_percent:
        return (f"start_percent ({start_percent}) is after end_percent ({end_percent}): no "
                f"step would be {what}")
    return None


def queue_time_check(layers, start_percent, end_percent, what: str = "steered") -> bool | str:
    """``validate_inputs``' answer: True, or the message that refuses the prompt."""
    errors = [e for e in (layers_error(layers), window_error(start_percent, end_percent, what))
              if e]
    return "; ".join(errors) if errors else True


def titled(title: str, exc: BaseException) -> BaseException:
    """The same error with the node's title in front (once), same type where possible."""
    message = str(exc)
    if message.startswith(title):
        return exc
    message = f"{title}: {message}"
    try:
        renamed = type(exc)(message)
    except Exception:  # an exception type with another constructor
        renamed = ValueError(message) if isinstance(exc, ValueError) else RuntimeError(message)
    return renamed


def raise_titled(title: str, exc: BaseException):
    """Raise ``exc`` again with the node's title in front of its message (call in except)."""
    renamed = titled(title, exc)
    if renamed is exc:
        raise exc
    raise renamed from exc
