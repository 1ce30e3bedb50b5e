"""Metric writers (JSONL, TensorBoard), throughput / MFU, plots, progress lines and log levels.

Names are imported on first use (PEP 562), so `maxlm.monitor.progress` and
`maxlm.monitor.logs` load without jax or matplotlib (the scaling fits use them).
"""
import importlib

_WHERE = {
    "MetricWriter": "writers", "MetricsWriteError": "writers", "read_jsonl": "writers",
    "write_json_atomic": "writers", "peak_flops_per_device": "throughput", "mfu": "throughput",
    "loss_figure": "plots", "plot_loss_curve": "plots", "Progress": "progress",
    "quiet_library_logs": "logs",
}
__all__ = sorted(_WHERE)


def __getattr__(name):
  if name not in _WHERE:
    raise AttributeError(f"module 'maxlm.monitor' has no attribute {name!r}")
  return getattr(importlib.import_module(f"maxlm.monitor.{_WHERE[name]}"), name)
