"""Checkpointing with orbax's CheckpointManager, and the rules that keep a run whole.

One checkpoint holds three items: `state` (params, optimizer state, step,
rng; restored directly into its shardings), `data` (the Grain iterator's
position, through maxlm/data/state.py's handler, restorable on any host count), so a resumed run sees the same
batches as an uninterrupted one, and `meta` (JSON: the run's config, the host
count, a digest of every array leaf; see integrity.py and runconfig.py).

Orbax writes each step into a temporary directory and renames it only once
every host has finished, so a half-written step is never listed. What this
module adds:

- fallback: a committed step that no longer reads (a truncated file, bytes
  changed on disk: caught by the digest) is skipped for the previous one,
  with a warning; the skipped steps are moved to `<dir>-unreadable/`, kept
  for inspection, so later saves never collide with them;
- refusal: when checkpoints exist and none restores, or the run's config
  differs from the checkpoint's in a field that changes the run, or the data
  state belongs to another host count, `restore_or_fail` raises a RunError
  listing each step and why. A run never starts again from step 0 over
  checkpoints it could not read;
- keep: old steps are deleted only after a newer one has committed, so a
  failed save (a full disk) never costs the checkpoints before it; the failed
  step's temporary files are removed and the error is one line with the path
  and the bytes free.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil

import jax
import orbax.checkpoint as ocp

from maxlm.checkpoint import integrity, runconfig
from maxlm.data import state as data_state  # iterator state restorable on any host count
from maxlm.errors import RunError

log = logging.getLogger(__name__)

META_FORMAT = 1
_TMP_MARK = ".orbax-checkpoint-tmp"


class CheckpointSaveError(RunError):
  """A save failed; the older checkpoints are intact."""


class RestoreRefused(RunError):
  """Checkpoints exist but this run must not continue from (or over) them."""


class CheckpointDamaged(RunError):
  """One step cannot be used (unreadable, or its data no longer matches its digest)."""


class _Refusal(Exception):
  """A step that is readable but is not this run's (config, shape, data state)."""

  def __init__(self, kind: str, reason: str, advice: str = ""):
    super().__init__(reason)
    self.kind, self.advice = kind, advice


def _first_line(e: BaseException) -> str:
  msg = str(e).strip().splitlines()
  return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"


def _chain(e: BaseException):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def out_of_disk(e: BaseException) -> bool:
  """True when `e` (or its cause) is ENOSPC: an OSError, or TensorStore's text for it."""
  return any(getattr(x, "errno", None) == errno.ENOSPC or "No space left on device" in str(x)
             or "os_error_code='28'" in str(x) for x in _chain(e))


class _OneLineOrbaxErrors(logging.Filter):
  """Orbax logs a failed save's whole traceback (hundreds of lines) before raising it;
  the Checkpointer re-raises it as one line, so the record keeps only its message."""

  def filter(self, record):
    if record.exc_info and "orbax" in (record.pathname or ""):
      record.exc_info, record.exc_text = None, None
    return True


def _install_log_filter():
  logger = logging.getLogger("absl")
  if not any(isinstance(f, _OneLineOrbaxErrors) for f in logger.filters):
    logger.addFilter(_OneLineOrbaxErrors())


class Checkpointer:
  """Saves every `every` steps, keeps the last `keep`, restores the newest good one.

  `run_config` (a plain dict of the whole config) is recorded in every save
  and compared on restore; `allow_changes` names run-changing fields that may
  differ (runconfig.py).
  """

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True,
               run_config: dict | None = None, allow_changes=()):
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
      raise ValueError(f"ckpt.keep={keep!r}: must be an int >= 1 (the newest checkpoints kept;"
                       " 0 would keep none and a run could never resume)")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
      raise ValueError(f"ckpt.every={every!r}: must be an int >= 1 (steps between saves)")
    _install_log_filter()
    self.directory = os.path.abspath(directory)
    self.keep = keep
    self.run_config = run_config
    self.allow_changes = runconfig.allowed_prefixes(allow_changes)
    self._is_main = jax.process_index() == 0
    # max_to_keep stays None: orbax would delete old steps even when the new one
    # failed to finalise; _prune deletes only after a commit is confirmed.
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=every, max_to_keep=None,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True),
        item_names=("state", "data", "meta"),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": data_state.CheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()},
    )
    self._async = async_save
    self._last_saved = self._mngr.latest_step()
    self._pending = None  # step of an async save not yet confirmed committed
    self._failed = False

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  # ---------------------------------------------------------------- save

  def save(self, step: int, state, data_iter, *, force: bool = False) -> bool:
    """Saves if `step` is on the interval (or `force`); returns whether it saved.

    Raises CheckpointSaveError (one line: path, bytes free) when this save, or
    the previous asynchronous one, failed.
    """
    if step == self._last_saved:  # e.g. the final save landing on an interval step
      return False
    if not force and not self._mngr.should_save(step):
      return False
    self._confirm_pending()
    meta = dict(format=META_FORMAT, step=int(step), digest=integrity.digest(state),
                config=self.run_config, process_count=jax.process_count())
    try:
      saved = self._mngr.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=data_state.CheckpointSave(data_iter),
                                  meta=ocp.args.JsonSave(meta)),
          force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(step, e) from e
    if saved:
      self._last_saved, self._pending = step, step
      if not self._async:
        self._confirm_pending()
    return saved

  def _confirm_pending(self) -> None:
    """Waits for an async save; on success prunes to `keep`, on failure raises."""
    if self._failed:
      raise CheckpointSaveError(f"an earlier save into {self.directory} failed; not saving more")
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(self._pending, e) from e
    if self._pending is not None:
      self._mngr.reload()
      if self._pending not in self._mngr.all_steps():
        raise self._save_failed(self._pending, RuntimeError("the step did not commit"))
      self._pending = None
      self._prune()

  def _prune(self) -> None:
    for s in self.all_steps()[:-self.keep]:
      self._mngr.delete(s)

  def _save_failed(self, step, e: BaseException) -> CheckpointSaveError:
    self._failed = True
    if self._is_main:  # a failed step's temporary files: nothing can finish them
      for name in os.listdir(self.directory) if os.path.isdir(self.directory) else ():
        if _TMP_MARK in name:
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    self._mngr.reload()
    kept = self.all_steps()
    try:
      free = f"{shutil.disk_usage(self.directory).free:,} bytes free"
    except OSError:
      free = "free space unknown"
    what = "no space left on device" if out_of_disk(e) else _first_line(e)
    then = (f"older checkpoints kept: {kept}; rerun after fixing this to resume from step"
            f" {kept[-1]}" if kept else "no older checkpoint exists")
    return CheckpointSaveError(f"checkpoint step {step} was not saved to {self.directory}:"
                               f" {what} ({free}); {then}")

  # ---------------------------------------------------------------- restore

  def _meta(self, step: int) -> dict | None:
    """The step's `meta` item, or None for checkpoints written before it existed."""
    if not os.path.isdir(os.path.join(self.directory, str(step), "meta")):
      return None
    try:
      return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointDamaged(f"its metadata is unreadable ({_first_line(e)})") from e

  def _check_config(self, step: int, meta: dict | None, *, quiet: bool = False) -> None:
    """Raises _Refusal for config changes that change the run; warns about the rest."""
    if not meta or meta.get("config") is None or self.run_config is None:
      return
    cls = runconfig.classify(runconfig.diff(meta["config"], self.run_config), self.allow_changes)
    if cls.shape:
      raise _Refusal("shape", "its parameters have another shape: " + ", ".join(
          map(str, cls.shape)), "it cannot be restored into this model: use a new --workdir,"
          " or start a new stage from it with init.from_checkpoint")
    if cls.refused:
      fields = ",".join(c.field for c in cls.refused)
      raise _Refusal("config", "the config differs in fields that change the run: " + ", ".join(
          map(str, cls.refused)), f"if that is intended, rerun with"
          f" --config.ckpt.allow_changes={fields} (or use a new --workdir)")
    if quiet:
      return
    for c in cls.mixture:
      log.warning("resuming step %d with a changed data mixture: %s", step, c)
    for c in cls.allowed:
      log.warning("resuming step %d with a changed %s (allowed by ckpt.allow_changes)", step, c)

  def _data_refusal(self, meta: dict | None, e: BaseException):
    """A data-state restore failure that is a mismatch, not damage (or None)."""
    if isinstance(e, data_state.DataStateMismatch):  # e.g. a plain Grain pipeline's state
      return _Refusal("data", f"data-state mismatch: {_first_line(e)}", "the data iterator's"
                      " position cannot be mapped onto this run: resume with the host count and"
                      " sources that wrote it, or use a new --workdir")
    if not meta:
      return None
    if meta.get("config") and self.run_config:
      names = lambda c: sorted((c.get("data") or {}).get("sources") or {})
      if names(meta["config"]) != names(self.run_config):
        return _Refusal("data", f"data-state mismatch: written for sources"
                        f" {names(meta['config'])}, this run has {names(self.run_config)}"
                        f" ({_first_line(e)})", "the data iterator's state cannot be carried"
                        " over to other sources: use a new --workdir, or init.from_checkpoint")
    return None

  def _restore_checked(self, step: int, abstract_state, data_iter):
    """Restores `step` (state, then data in place) or raises CheckpointDamaged / _Refusal."""
    meta = self._meta(step)
    self._check_config(step, meta)
    try:
      state = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))["state"]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointDamaged(f"its state is unreadable ({_first_line(e)})") from e
    if meta and meta.get("digest"):
      bad = integrity.mismatches(state, meta["digest"])
      if bad:
        raise CheckpointDamaged(f"its array data is damaged: {len(bad)} of {len(meta['digest'])}"
                                f" arrays differ from the digest recorded at save ({', '.join(bad[:3])})")
    try:
      self._mngr.restore(step, args=ocp.args.Composite(
          data=data_state.CheckpointRestore(data_iter)))
    except Exception as e:  # pylint: disable=broad-except
      refusal = self._data_refusal(meta, e)
      if refusal is not None:
        raise refusal from e
      raise CheckpointDamaged(f"its data-iterator state is unreadable ({_first_line(e)})") from e
    return state

  def restore(self, step: int, abstract_state, data_iter):
    """Restores exactly `step` (no fallback): state, and the data iterator in place."""
    try:
      return self._restore_checked(step, abstract_state, data_iter)
    except _Refusal as e:
      raise RestoreRefused(f"checkpoint step {step} in {self.directory}: {e}; {e.advice}") from None

  def _why_not(self, step: int) -> str:
    """The config / shape reason a step would be refused, without restoring it."""
    try:
      self._check_config(step, self._meta(step), quiet=True)
    except (_Refusal, CheckpointDamaged) as e:
      return str(e)
    return "not tried (a newer step was refused; an older one would not be this run either)"

  def restore_or_fail(self, abstract_state, data_iter):
    """Restores the newest usable step into `abstract_state`'s shapes and shardings.

    Returns (state, step), or (None, None) when there is no checkpoint at all.
    Damaged steps are skipped for older ones (and moved aside); a step that
    is readable but not this run's, or no usable step at all, raises
    RestoreRefused listing every step and why. Nothing is deleted.
    """
    steps = self.all_steps()
    if not steps:
      return None, None
    reasons: dict[int, str] = {}
    for step in reversed(steps):
      try:
        state = self._restore_checked(step, abstract_state, data_iter)
      except CheckpointDamaged as e:
        reasons[step] = str(e)
        log.warning("checkpoint step %d in %s is unreadable: %s; falling back to the previous"
                    " one", step, self.directory, e)
        continue
      except _Refusal as e:
        reasons[step] = str(e)
        for s in steps:
          reasons.setdefault(s, self._why_not(s))
        head = {"shape": "the model's shape changed",
                "config": "the config changed in fields that change the run",
                "data": "the data state does not match this run"}[e.kind]
        raise RestoreRefused(self._listing(f"not resuming from {self.directory}: {head}; nothing"
                                           f" was changed; {e.advice}", reasons)) from None
      if reasons:
        self._set_aside(sorted(reasons))
      return state, step
    raise RestoreRefused(self._listing(
        f"not resuming: no checkpoint in {self.directory} could be restored, and training from"
        " step 0 over them would lose the run; nothing was changed", reasons))

  restore_latest = restore_or_fail  # the name earlier callers use

  @staticmethod
  def _listing(head: str, reasons: dict[int, str]) -> str:
    return head + "".join(f"\n  step {s}: {reasons[s]}" for s in sorted(reasons, reverse=True))

  def _set_aside(self, steps: list[int]) -> None:
    """Moves damaged steps newer than the restored one out of the manager's directory."""
    aside = self.directory.rstrip("/") + "-unreadable"
    if self._is_main:
      os.makedirs(aside, exist_ok=True)
      for s in steps:
        dst = os.path.join(aside, str(s))
        if os.path.exists(dst):
          shutil.rmtree(dst)
        os.replace(os.path.join(self.directory, str(s)), dst)
      log.warning("moved unreadable checkpoint step(s) %s to %s (kept for inspection)", steps,
                  aside)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("maxlm_checkpoint_set_aside")
    self._mngr.reload()
    self._last_saved = self._mngr.latest_step()

  # ---------------------------------------------------------------- other

  def delete_after(self, step: int) -> None:
    """Drops checkpoints newer than `step` (a rollback replays those steps on other data)."""
    self._confirm_pending()
    for s in self.all_steps():
      if s > step:
        self._mngr.delete(s)
    self._last_saved = self._mngr.latest_step()

  def wait(self):
    self._confirm_pending()

  def close(self):
    try:
      if not self._failed:
        self._confirm_pending()
    finally:
      try:
        self._mngr.close()
      except Exception:  # pylint: disable=broad-except
        if not self._failed:  # after a failed save its error was raised already
          raise


def export_params(params, directory: str) -> None:
  """Writes a params-only checkpoint (no optimizer state), for later stages and eval."""
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(directory), params, force=True)
  ckptr.wait_until_finished()


def load_params(directory: str, abstract_params=None):
  """Loads a params-only export; `abstract_params` (with shardings) places it directly."""
  ckptr = ocp.StandardCheckpointer()
  return ckptr.restore(os.path.abspath(directory), abstract_params)


def load_state_params(state_dir: str, abstract_params):
  """Only the params of a full-state checkpoint (`checkpoints/<step>/state`).

  `abstract_params` (ShapeDtypeStructs with shardings) is an explicit target, so
  a checkpoint written on another device topology restores onto this one.
  """
  target = dict(params=abstract_params)
  return ocp.PyTreeCheckpointer().restore(
      os.path.abspath(state_dir),
      args=ocp.args.PyTreeRestore(item=target,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True))["params"]
