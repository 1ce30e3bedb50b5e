r"""Needle in a haystack: can the model retrieve one fact from anywhere in its context?

  python -m maxlm.eval.needle --checkpoint=/tmp/maxlm_long/len_512 --lengths=128,256,512 \
      --depths=0,0.25,0.5,0.75,1 --out=/tmp/needle

A fact (the needle, "The secret number is 4821.") is inserted at a depth of
0..100% into filler text cut to each context length, followed by the
question ("What is the secret number? The secret number is"); the answer is
scored two ways (Kamradt 2023; the Llama 3.1 and Gemini long-context evals):

- exact retrieval by greedy decoding: the first generated tokens equal the
  answer (maxlm.generate's KV-cache decoding when it is importable, else
  greedy re-forwarding of the growing sequence; both are greedy argmax);
- answer log-likelihood: sum of log p(answer token | prompt, previous answer
  tokens) in one teacher-forced forward.

Writes results.json and heatmap.png (depth x length, greedy accuracy) under --out.

The harness works on token ids (`make_prompt`, `evaluate`), so it can be
tested with a synthetic model and golden positions; the text layer
tokenizes the needle, question and filler with the model's tokenizer.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np

NEEDLE = " The secret number is {answer}. "
QUESTION = "\nWhat is the secret number? The secret number is"
ANSWER = " {answer}."
FILLER = ("The quick brown fox walked along the river bank and thought about the weather, the"
          " price of bread, and the long road that still lay ahead before nightfall. ")

LogitsFn = Callable[[np.ndarray], np.ndarray]  # tokens [B, T] -> logits [B, T, V]


def insert_position(n_filler: int, depth: float) -> int:
  """Token index in the filler where the needle goes: depth 0 = first, 1 = right before the question."""
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"depth={depth} must be in [0, 1]")
  return int(round(depth * n_filler))


def make_prompt(filler_ids: Sequence[int], needle_ids: Sequence[int],
                question_ids: Sequence[int], context_len: int, depth: float,
                prefix_ids: Sequence[int] = ()):
  """(prompt ids of exactly context_len tokens, index of the needle's first token).

  The filler is repeated / cut so prefix + filler + needle + question fill
  the context.
  """
  n_filler = context_len - len(prefix_ids) - len(needle_ids) - len(question_ids)
  if n_filler < 0:
    raise ValueError(f"context_len={context_len} is shorter than the needle and question")
  reps = -(-n_filler // max(len(filler_ids), 1))
  filler = (list(filler_ids) * reps)[:n_filler]
  at = insert_position(n_filler, depth)
  prompt = list(prefix_ids) + filler[:at] + list(needle_ids) + filler[at:] + list(question_ids)
  return np.asarray(prompt, np.int32), len(prefix_ids) + at


def answer_loglik(logits_fn: LogitsFn, prompt: np.ndarray, answer: Sequence[int]):
  """(sum log p(answer | prompt), all answer tokens argmax under teacher forcing)."""
  seq = np.concatenate([prompt, np.asarray(answer, np.int32)])[None]
  logits_tv = np.asarray(logits_fn(seq[:, :-1]), np.float64)[0]
  picked_av = logits_tv[len(prompt) - 1:]  # rows predicting each answer token
  m = picked_av.max(-1, keepdims=True)
  logp_av = picked_av - (m + np.log(np.exp(picked_av - m).sum(-1, keepdims=True)))
  ans = np.asarray(answer)
  return float(logp_av[np.arange(len(ans)), ans].sum()), bool(
      (picked_av.argmax(-1) == ans).all())


def greedy_by_forward(logits_fn: LogitsFn, prompt: np.ndarray, n: int) -> list[int]:
  """Greedy decoding by re-running the forward on the growing sequence (no cache)."""
  seq = list(prompt)
  for _ in range(n):
    seq.append(int(np.argmax(np.asarray(logits_fn(np.asarray([seq], np.int32)))[0, -1])))
  return seq[len(prompt):]


def evaluate(logits_fn: LogitsFn, *, filler_ids, needle_fn, question_ids, lengths, depths,
             prefix_ids=(), greedy_fn=None, seed: int = 0, progress: bool = False) -> list[dict]:
  """Scores every (length, depth). `needle_fn(answer_index)` -> (needle ids, answer ids).

  `progress`: '[k/n] cells; elapsed, ETA' lines on stderr (cells cost ~ their length).
  """
  greedy_fn = greedy_fn or (lambda prompt, n: greedy_by_forward(logits_fn, prompt, n))
  rng = np.random.default_rng(seed)
  bar = None
  if progress and lengths and depths:
    from maxlm.eval.progress import EvalProgress  # pylint: disable=g-import-not-at-top
    bar = EvalProgress(len(lengths) * len(depths), desc="needle", unit="cells")
  out = []
  for length in lengths:
    for depth in depths:
      needle_ids, answer_ids = needle_fn(int(rng.integers(1000, 10_000)))
      prompt, at = make_prompt(filler_ids, needle_ids, question_ids, length, depth, prefix_ids)
      ll, tf_correct = answer_loglik(logits_fn, prompt, answer_ids)
      got = list(greedy_fn(prompt, len(answer_ids)))[:len(answer_ids)]
      out.append(dict(length=int(length), depth=float(depth), needle_at=int(at),
                      greedy_correct=got == list(answer_ids), answer_loglik=ll,
                      teacher_forced_correct=tf_correct))
      if bar is not None:
        bar.update(n=1)
  return out


_METRIC_LABELS = {"greedy_correct": "greedy_correct: share of answers generated exactly (0-1)",
                  "teacher_forced_correct": "teacher_forced_correct: share of answers argmax-correct (0-1)",
                  "answer_loglik": "answer_loglik: log p(answer | context) (nats)"}


def heatmap(results: list[dict], path: str, key: str = "greedy_correct", title: str = "") -> str:
  """depth (rows) x length (columns) PNG of `key`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  lengths = sorted({r["length"] for r in results})
  depths = sorted({r["depth"] for r in results})
  grid_dl = np.full((len(depths), len(lengths)), np.nan)
  for r in results:
    grid_dl[depths.index(r["depth"]), lengths.index(r["length"])] = float(r[key])
  fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2, 0.5 * len(depths) + 1.5))
  im = ax.imshow(grid_dl, cmap="RdYlGn", vmin=0 if key != "answer_loglik" else None,
                 vmax=1 if key != "answer_loglik" else None, aspect="auto")
  ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
  ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
  ax.set_xlabel("context length (tokens)")
  ax.set_ylabel("needle depth")
  ax.set_title(title or f"needle in a haystack: {key}")
  fig.colorbar(im, ax=ax, label=_METRIC_LABELS.get(key, key))
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def run(checkpoint: str, lengths: Sequence[int], depths: Sequence[float], out_dir: str,
        progress: bool = True) -> list[dict]:
  """Loads a maxlm workdir / HF dir, scores it, writes results.json and heatmap.png.

  Progress lines go to stderr while it scores; the summary line (stdout) comes last.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import maxlm  # pylint: disable=g-import-not-at-top
  from maxlm import generate as gen  # pylint: disable=g-import-not-at-top
  cfg, params, tok = gen.load_model(checkpoint)
  params = jax.device_put(params)
  logits_fn = lambda toks: np.asarray(maxlm.forward(cfg, params, toks))

  def greedy(prompt, n):  # KV-cache decoding, greedy (temperature 0)
    return gen.generate_ids(cfg, params, [list(prompt)], max_new_tokens=n)[0]

  def needle_fn(answer):
    return (tok.encode(NEEDLE.format(answer=answer)), tok.encode(ANSWER.format(answer=answer)))

  bos = tok.bos_id
  results = evaluate(logits_fn, filler_ids=tok.encode(FILLER), needle_fn=needle_fn,
                     question_ids=tok.encode(QUESTION), lengths=lengths, depths=depths,
                     prefix_ids=[bos] if bos is not None else [],
                     greedy_fn=greedy, progress=progress)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  heatmap(results, os.path.join(out_dir, "heatmap.png"), title=os.path.basename(checkpoint))
  heatmap(results, os.path.join(out_dir, "heatmap_loglik.png"), key="answer_loglik")
  acc = np.mean([r["greedy_correct"] for r in results])
  print(f"needle: greedy exact retrieval {acc:.1%} over {len(results)} (length, depth) cells;"
        f" mean answer log-likelihood {np.mean([r['answer_loglik'] for r in results]):.3f}")
  return results


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  run(f.checkpoint, [int(x) for x in f.lengths], [float(x) for x in f.depths], f.out,
      progress=f.progress)


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoint", None, "maxlm workdir, checkpoint step dir or HF dir.")
  flags.DEFINE_list("lengths", ["128", "256", "512"], "Context lengths in tokens.")
  flags.DEFINE_list("depths", ["0", "0.25", "0.5", "0.75", "1"], "Needle depths in [0, 1].")
  flags.DEFINE_string("out", "needle_out", "Output directory.")
  flags.DEFINE_boolean("progress", True, "Print '[k/n] cells; ETA' lines on stderr.")
  flags.mark_flags_as_required(["checkpoint"])
  from maxlm import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)  # one-line input errors, quiet library logs
