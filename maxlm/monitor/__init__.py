"""Metric writers (JSONL, TensorBoard), throughput / MFU, and plots."""
from maxlm.monitor.writers import MetricWriter, MetricsWriteError, read_jsonl, write_json_atomic
from maxlm.monitor.throughput import peak_flops_per_device, mfu
from maxlm.monitor.plots import loss_figure, plot_loss_curve
