r"""lm-eval throughput: the `maxlm` model against lm-eval's `hf` model (torch) on one model.

  python bench/lm_eval_throughput.py --preset=tiny --mc_docs=200 --roll_docs=50
  python bench/lm_eval_throughput.py --threads=1     # one core each (a shared machine)

A random-weight maxlm model of the preset's shape is exported to a Hugging Face
directory (maxlm.interop) with a character-level tokenizer.json, so both
models read the same weights and split text identically. Both then answer the
same requests in this process: `loglikelihood` (a 4-way multiple-choice task)
and `loglikelihood_rolling` (perplexity over longer texts), batch size and
max_length equal. Requests/s are the best of --repeats calls after the first
(which compiles jax shapes or warms torch; its time is printed too), the two
models' calls interleaved so load on the machine slows both alike. The largest
per-request difference shows both computed the same thing.
"""

import argparse
import os
import string
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if "--threads=1" in sys.argv:  # before jax starts: XLA's CPU thread pool is sized at import
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                             " intra_op_parallelism_threads=1").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402  (torch, transformers, accelerate)

from configs import pretrain  # noqa: E402
from maxlm.eval.lm_eval_model import MaxlmLM  # noqa: E402
from maxlm.interop import export_checkpoint  # noqa: E402
from maxlm.model import ModelConfig, init_params  # noqa: E402

CHARS = string.ascii_lowercase + " .,\n"


def write_model(preset: str, path: str, max_len: int) -> None:
  """A random maxlm model as an HF dir with a char-level tokenizer (ids 0-2 special)."""
  import transformers  # pylint: disable=g-import-not-at-top
  from tokenizers import Tokenizer, decoders, models  # pylint: disable=g-import-not-at-top
  cfg = ModelConfig.from_any(pretrain.model_config(preset).to_dict())
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0))
  # Larger-than-init weights: peaked, realistic-looking distributions.
  params = jax.tree.map(lambda w: w * 5 if w.ndim >= 2 else w, params)
  export_checkpoint(cfg, params, path, max_position_embeddings=max_len)
  vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
  tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
  tk.decoder = decoders.Fuse()
  transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                       unk_token="<unk>").save_pretrained(path)


def make_requests(rng, mc_docs: int, roll_docs: int):
  words = ["".join(rng.choice(list(string.ascii_lowercase), rng.integers(2, 8)))
           for _ in range(300)]
  text = lambda n: " ".join(rng.choice(words, n)) + "."
  ll = [Instance("loglikelihood", {}, (text(rng.integers(5, 30)), " " + text(rng.integers(1, 4))),
                 idx=i) for _ in range(mc_docs) for i in range(4)]
  roll = [Instance("loglikelihood_rolling", {}, (text(rng.integers(20, 200)),), idx=0)
          for _ in range(roll_docs)]
  return ll, roll


def timed(fn, requests):
  t0 = time.perf_counter()
  out = fn(requests)
  return time.perf_counter() - t0, np.array([np.ravel(r)[0] for r in out], np.float64)


def side_by_side(models: dict, method: str, reqs, repeats: int) -> dict:
  """{name: (first-call s, best of `repeats` s, values)}, the models' repeats interleaved
  (maxlm, hf, maxlm, hf, ...) so a busy machine slows both alike."""
  res = {name: [timed(getattr(lm, method), reqs)[0], float("inf"), None]
         for name, lm in models.items()}
  for _ in range(repeats):
    for name, lm in models.items():
      t, vals = timed(getattr(lm, method), reqs)
      res[name][1], res[name][2] = min(res[name][1], t), vals
  return res


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="tiny")
  ap.add_argument("--mc_docs", type=int, default=200, help="4 loglikelihood requests each")
  ap.add_argument("--roll_docs", type=int, default=50)
  ap.add_argument("--batch_size", type=int, default=32)
  ap.add_argument("--max_length", type=int, default=256)
  ap.add_argument("--repeats", type=int, default=3, help="timed calls per model; best is kept")
  ap.add_argument("--threads", type=int, default=0,
                  help="1 = both on one thread (per-core figures, steadier on a shared machine)")
  args = ap.parse_args()
  if args.threads:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
  path = os.path.join(tempfile.mkdtemp(), "model")
  write_model(args.preset, path, args.max_length)
  ll, roll = make_requests(np.random.default_rng(0), args.mc_docs, args.roll_docs)
  models = {
      "maxlm": MaxlmLM(pretrained=path, batch_size=args.batch_size, max_length=args.max_length),
      "hf": HFLM(pretrained=path, backend="causal", device="cpu", dtype="float32",
                 batch_size=args.batch_size, max_length=args.max_length, add_bos_token=True),
  }
  print(f"preset={args.preset}  batch_size={args.batch_size}  max_length={args.max_length}"
        f"  jax {jax.devices()[0].device_kind}, torch CPU")
  print(f"{'method':>22} {'requests':>9} {'model':>6} {'first s':>8} {'req/s':>8}")
  models["hf_roll"] = HFLM(pretrained=path, backend="causal", device="cpu", dtype="float32",
                           batch_size=args.batch_size, max_length=args.max_length)
  # hf_roll: no BOS added to rolling texts, else hf also scores log p(BOS | BOS) (parity test).
  for method, reqs, names in (("loglikelihood", ll, ("maxlm", "hf")),
                              ("loglikelihood_rolling", roll, ("maxlm", "hf_roll"))):
    res = side_by_side({n: models[n] for n in names}, method, reqs, args.repeats)
    for name in names:
      first, best, _ = res[name]
      print(f"{method:>22} {len(reqs):>9} {name:>6} {first:>8.2f} {len(reqs) / best:>8.1f}",
            flush=True)
    a, b = (res[n] for n in names)
    print(f"{'':>22} maxlm / hf = {b[1] / a[1]:.2f}x   max |maxlm - hf| ="
          f" {np.max(np.abs(a[2] - b[2])):.2e} nats")


if __name__ == "__main__":
  main()
