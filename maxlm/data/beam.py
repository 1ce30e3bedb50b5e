"""Beam pipeline options for maxlm's pipelines (prepare and curation).

One home for the rule both commands follow: flags a command does not know are
Beam pipeline options; without --runner (or with DirectRunner / FnApiRunner)
the pipeline runs on Beam's FnApiRunner in multi_processing mode, one worker
process per core. DirectRunner's own default would first try the Prism runner,
which downloads a binary at run time and fails offline. With any other runner
(Dataflow, Flink, Spark) the options pass through untouched.

The local workers are fresh interpreters that log at INFO from their own
root logger (a dozen "channel established" lines each): they get the level
this process gives the `apache_beam` logger (maxlm.monitor.logs quiets it at
the command line), unless the flags set --default_sdk_harness_log_level.

Lives in maxlm.data (not maxlm.curate) so prepare can use it without
importing curation; curation imports it from here.
"""

from __future__ import annotations

import logging
import os


def pipeline_options(beam_args, num_workers: int = 0):
  """(PipelineOptions, runner or None) for `beam_args`.

  num_workers: local worker processes for the FnApiRunner (0 = os.cpu_count()),
  used only when the flags do not set --direct_num_workers.
  """
  # Beam imported here: `import maxlm.data` must stay light for training hosts.
  from apache_beam.options.pipeline_options import (  # pylint: disable=g-import-not-at-top
      DirectOptions, PipelineOptions, StandardOptions, WorkerOptions)
  beam_args = list(beam_args or ())
  options = PipelineOptions(beam_args)
  runner = options.view_as(StandardOptions).runner
  if runner not in (None, "DirectRunner", "FnApiRunner"):
    return options, None
  from apache_beam.runners.portability.fn_api_runner import FnApiRunner  # pylint: disable=g-import-not-at-top
  direct = options.view_as(DirectOptions)
  if not any(a.startswith("--direct_running_mode") for a in beam_args):
    direct.direct_running_mode = "multi_processing"
  # DirectOptions defaults direct_num_workers to 1, so "not given" is read off the
  # flags; in_memory mode is one process by its meaning (Beam runs it with one).
  if (not any(a.startswith("--direct_num_workers") for a in beam_args)
      and direct.direct_running_mode != "in_memory"):
    direct.direct_num_workers = num_workers or os.cpu_count() or 1
  if not any(a.startswith("--default_sdk_harness_log_level") for a in beam_args):
    level = logging.getLogger("apache_beam").getEffectiveLevel()
    options.view_as(WorkerOptions).default_sdk_harness_log_level = logging.getLevelName(level)
  return options, FnApiRunner(provision_info=_worker_provision(options))


def _worker_provision(options):
  """What the FnApiRunner's local workers are told of the options: only their
  log level (the runner gives them no options at all by default, so a worker
  would log at INFO whatever the command line says)."""
  from apache_beam.portability.api import beam_provision_api_pb2  # pylint: disable=g-import-not-at-top
  from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo  # pylint: disable=g-import-not-at-top
  from google.protobuf import struct_pb2  # pylint: disable=g-import-not-at-top
  from apache_beam.options.pipeline_options import WorkerOptions  # pylint: disable=g-import-not-at-top
  opts = struct_pb2.Struct()
  level = options.view_as(WorkerOptions).default_sdk_harness_log_level or "INFO"
  opts.update({"default_sdk_harness_log_level": level})
  if logging.getLevelName(level) != logging.INFO and not options.view_as(
      WorkerOptions).sdk_harness_log_level_overrides:
    # The harness's own __main__ warns that a local worker has no staging
    # directory (it needs none): noise on every run of every worker.
    opts.update({"sdk_harness_log_level_overrides": {"__main__": "ERROR"}})
  return ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(
      retrieval_token="unused-retrieval-token", pipeline_options=opts))
