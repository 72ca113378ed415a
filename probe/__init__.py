"""The Stability Probe feature: a recorder on the attention hook, a registry of recorded runs,
and the report built from them."""

from .recorder import patch_probe
from .registry import ProbeHandle, ProbeSettings, find_run, probe_state
from .report import Report, build_report

__all__ = ["ProbeHandle", "ProbeSettings", "Report", "build_report", "find_run", "patch_probe",
           "probe_state"]
