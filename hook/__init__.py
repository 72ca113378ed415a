"""The hook core: the pack's one attention override (override.py), the parsed call its features
see (call.py), where a call sits in the schedule (schedule.py) and the `layers` selection
(layers.py). Family knowledge lives in ``families/``; features in ``circulation/`` and
``probe/``. Imports ComfyUI only inside functions, so the pure parts are testable without it.
"""
