"""A maxlm model for lm-evaluation-harness, registered as "maxlm".

  lm_eval --model maxlm --model_args pretrained=/path/to/workdir,batch_size=16 --tasks hellaswag
  (through `python -m maxlm.eval.harness`, which registers it first)

`pretrained` is a maxlm workdir (its params export or newest checkpoint, and
its tokenizer), a `checkpoints/<step>` dir, or a Hugging Face Llama-family
directory (maxlm.interop, with that directory's tokenizer.model or
tokenizer.json); see maxlm.generate.load_model. Needs lm-eval (an optional
extra), not torch.

Requests go through maxlm.eval.scoring (sorted by length, padded to four
length buckets per octave, jitted forward) and maxlm.generate (KV cache).
Tokenization follows lm-eval's `hf` model (scoring.encode_pair): BOS (when the
tokenizer has one and add_bos) leads the context; the context's trailing
whitespace moves into the continuation; context + continuation are encoded
together and the continuation is the tail, so a continuation that starts
mid-word, with a newline or with a space gets the ids the hf model gives it.
Rolling windows are lm-eval's too (scoring.rolling_windows).

Multi-host (the in-training hook, params a global array): lm-eval runs whole
on every process with the same requests (it sees one rank), and
scoring.score_continuations gives each process's devices their share of each
batch and all-gathers the results, so lm-eval's metrics are computed from the
full, identical result list on every process (process 0 writes them).
`generate_until` is not split: every process decodes every request in
lockstep. `stats` counts the rows this process ran (`rows`, `calls`).

`progress=True` (a model arg; on by default in `python -m maxlm.eval.harness`,
off in the library) prints '[k/n] requests; elapsed, ETA' lines on stderr
per request type (maxlm/eval/progress.py).
"""

from __future__ import annotations

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from maxlm import generate as generate_lib
from maxlm.eval import progress as progress_lib
from maxlm.eval import scoring


# `python -m maxlm.eval.harness` turns this on before lm-eval builds the model.
PROGRESS_DEFAULT = False


@register_model("maxlm")
class MaxlmLM(LM):
  """loglikelihood, loglikelihood_rolling and generate_until on a maxlm model."""

  def __init__(self, pretrained: str | None = None, batch_size: int | str = 8,
               max_length: int | None = None, step: int | None = None, add_bos: bool = True,
               model=None, progress: bool | str | None = None, progress_lines: int = 10,
               **kwargs):
    """`model=(ModelConfig, params, tokenizer)` skips loading (tests, in-training eval)."""
    super().__init__()
    del kwargs  # lm-eval passes device, max_batch_size, ...: one process, jax picks devices
    if model is None:
      if pretrained is None:
        raise ValueError("model_args needs pretrained=<maxlm workdir or HF directory>")
      model = generate_lib.load_model(pretrained, step=None if step is None else int(step))
      if max_length is None:
        max_length = _workdir_seq_len(pretrained)
    self.cfg, self.params, self.tok = model
    self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
    self.max_length = int(max_length or 2048)
    self.add_bos = _flag(add_bos)
    self.progress = PROGRESS_DEFAULT if progress is None else _flag(progress)
    self.progress_lines = int(progress_lines)
    self.stats: dict = {}  # rows / calls this process ran (scoring.score_continuations)
    if self.tok.bos_id is None and self.tok.eos_id is None:
      # Empty contexts and rolling windows are conditioned on BOS, else EOS.
      raise ValueError(f"tokenizer {getattr(self.tok, 'path', '')} has neither a BOS nor an"
                       " EOS id: nothing to condition a first token on")

  # ------------------------------------------------------------------ helpers
  def _progress(self, total: int, what: str, unit: str):
    if not (self.progress and total > 0):
      return None
    return progress_lib.EvalProgress(total, desc=f"harness {what}", unit=unit,
                                     lines=self.progress_lines)

  def _prefix(self) -> list[int]:
    return [self.tok.bos_id] if self.add_bos and self.tok.bos_id is not None else []

  def _prefix_token(self) -> int:
    """lm-eval's `prefix_token_id`: BOS, else EOS."""
    return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

  def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    if not context:  # lm-eval: an empty context is its prefix token alone
      return scoring.encode_pair(self.tok.encode, "", continuation, [self._prefix_token()])
    ctx, cont = scoring.encode_pair(self.tok.encode, context, continuation, self._prefix())
    # A whitespace-only context without BOS leaves no ids (lm-eval would assert).
    return (ctx or [self._prefix_token()]), cont

  # ------------------------------------------------------------------ LM API
  def loglikelihood(self, requests) -> list[tuple[float, bool]]:
    pairs = [self.encode_pair(*r.args) for r in requests]
    scores = scoring.score_continuations(self.cfg, self.params, pairs,
                                         batch_size=self.batch_size, max_len=self.max_length,
                                         truncate=True, stats=self.stats,
                                         progress=self._progress(len(pairs), "loglikelihood",
                                                                 "requests"))
    out = []
    for r, s in zip(requests, scores):
      out.append((s.total, s.greedy))
      self.cache_hook.add_partial("loglikelihood", r.args, out[-1])
    return out

  def loglikelihood_rolling(self, requests) -> list[float]:
    windows, owner = [], []
    prefix = self._prefix_token()
    for i, r in enumerate(requests):
      ids = self.tok.encode(r.args[0])
      for w in scoring.rolling_windows(ids, self.max_length, prefix):
        windows.append(w)
        owner.append(i)
    # Counted in windows (what is scored); a long text is several.
    scores = scoring.score_continuations(self.cfg, self.params, windows,
                                         batch_size=self.batch_size, max_len=self.max_length,
                                         with_ranks=False, stats=self.stats,
                                         progress=self._progress(len(windows),
                                                                 "loglikelihood_rolling",
                                                                 "windows"))
    totals = [0.0] * len(requests)
    for i, s in zip(owner, scores):
      totals[i] += s.total
    for r, t in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", r.args, t)
    return totals

  def generate_until(self, requests) -> list[str]:
    out = [None] * len(requests)
    progress = self._progress(len(requests), "generate_until", "requests")
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
      kw = dict(r.args[1]) if len(r.args) > 1 and r.args[1] else {}
      groups.setdefault(_freeze(kw), []).append(i)
    for frozen, idx in groups.items():
      kw = dict(frozen)
      until = kw.get("until") or []
      until = [until] if isinstance(until, str) else list(until)
      max_new = int(kw.get("max_gen_toks", 256))
      temperature = float(kw.get("temperature", 0.0)) if kw.get("do_sample", False) else 0.0
      sampling = generate_lib.Sampling(temperature=temperature, top_k=int(kw.get("top_k", 0) or 0),
                                       top_p=float(kw.get("top_p", 1.0) or 1.0))
      for start in range(0, len(idx), self.batch_size):
        chunk = idx[start:start + self.batch_size]
        prompts = []
        for i in chunk:
          ids = self._prefix() + self.tok.encode(requests[i].args[0])
          prompts.append(ids[-(self.max_length - max_new):] if max_new < self.max_length else ids)
        stop_fn = None
        if until:
          stop_fn = lambda b, new: any(s in self.tok.decode(new) for s in until)
        new_ids = generate_lib.generate_ids(self.cfg, self.params, prompts,
                                            max_new_tokens=max_new, sampling=sampling,
                                            eos_id=self.tok.eos_id, stop_fn=stop_fn)
        for i, ids in zip(chunk, new_ids):
          text = self.tok.decode(ids)
          for s in until:
            if s and s in text:
              text = text[:text.find(s)]
          out[i] = text
          self.cache_hook.add_partial("generate_until", requests[i].args, text)
        if progress is not None:
          progress.update(n=len(chunk))
    return out


def _flag(v) -> bool:
  """A model arg as lm-eval passes it (a string from --model_args) or a bool."""
  return v if isinstance(v, bool) else str(v).lower() in ("true", "1", "yes")


def _freeze(d: dict) -> tuple:
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


def _workdir_seq_len(path: str) -> int | None:
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  for p in (path, os.path.dirname(os.path.dirname(os.path.abspath(path)))):
    cfg = os.path.join(p, "config.json")
    if os.path.isfile(cfg):
      with open(cfg) as f:
        c = json.load(f)
      if isinstance(c.get("data"), dict) and c["data"].get("seq_len"):
        return int(c["data"]["seq_len"])
      if c.get("max_position_embeddings"):
        return int(c["max_position_embeddings"])
  return None
