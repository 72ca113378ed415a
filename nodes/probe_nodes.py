"""Stability Probe nodes (filled in by the probe work)."""

PROBE_NODES = []
