"""ComfyUI glue: installs the pack's attention override on a cloned model and places each call
(model family, layer, step, branch). Imports ComfyUI modules only inside functions, so the pure
parts (layer selections, schedules) are testable without the host."""
