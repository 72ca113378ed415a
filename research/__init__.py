"""Command-line research tools: drive ComfyUI servers through a prompt × seed × α × β sweep and
reproduce the paper's tables 1, 2 and 3b from the resulting manifest and the user's own scores.

Runs outside ComfyUI: stdlib, numpy and safetensors only at import time (no torch, no ComfyUI),
so the client works on a laptop that drives remote GPU servers.
"""
