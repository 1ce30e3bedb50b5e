"""Continued pretraining from a Hugging Face directory, end to end, against transformers.

The parent is built here: a tiny random MistralForCausalLM (sliding window 16,
shorter than the 64-token rows) with a byte-level BPE tokenizer.json whose
BOS/EOS sit at the top of the vocabulary (the Llama 3 / Qwen2 layout, no
tokenizer.model). The stage is run as the README runs it:

  python -m maxlm.train.stages --config=configs/continued_pretrain.py:tiny,parent=HF_DIR ...

Checked: it trains with the parent's tokenizer and ids; its held-out loss at
step 0 (before any update) equals transformers' loss on the same held-out
tokens, each packed document run through the HF model on its own with the
batch's positions; and an export of one of its checkpoints (--step) loads in
transformers as the same family with maxlm's logits and the parent's tokenizer.
The anneal and long-context stages start from the same HF parent (one update
each; the anneal's step-0 loss is transformers' too, the long-context stage's is
not, by design: it changes RoPE before the first update).
"""
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

import torch  # noqa: E402  (the `reference` extra)
import transformers  # noqa: E402

from hf_fixtures import byte_level_bpe, randomize, save_hf_tokenizer  # noqa: E402

pytestmark = pytest.mark.torch  # transformers is the reference (3.11 stack only)

import maxlm  # noqa: E402
from maxlm import data as data_lib  # noqa: E402
from maxlm import generate  # noqa: E402
from maxlm.data import tokenizer as tokenizer_lib  # noqa: E402
from maxlm.interop import export  # noqa: E402
from maxlm.monitor import read_jsonl  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
WINDOW = 16


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
  """An HF Mistral directory with a tokenizer.json-only tokenizer; returns its path."""
  root = tmp_path_factory.mktemp("mistral")
  text = open(os.path.join(ROOT, "maxlm", "generate.py")).read()
  tk = byte_level_bpe(text, 400, BOS, EOS)
  save_hf_tokenizer(tk, str(root), BOS, EOS)
  config = transformers.MistralConfig(
      hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=512,
      num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=WINDOW,
      bos_token_id=tk.token_to_id(BOS), eos_token_id=tk.token_to_id(EOS))
  # Larger than init, so the loss is far from log(V) and from uniform.
  model = randomize(transformers.MistralForCausalLM(config), 0, scale=0.1)
  model.save_pretrained(str(root))
  assert not (root / "tokenizer.model").exists()
  return str(root)


def _run_stage(config_arg, workdir, *overrides):
  """`python -m maxlm.train.stages` as the README runs it, shrunk by --config overrides."""
  cmd = [sys.executable, "-m", "maxlm.train.stages", f"--config={config_arg}",
         "--config.data.eval_batches=1", "--config.monitor.tensorboard=False",
         "--config.monitor.plot=False", *overrides, f"--workdir={workdir}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  return workdir


@pytest.fixture(scope="module")
def cpt_run(parent, tmp_path_factory):
  return _run_stage(f"configs/continued_pretrain.py:tiny,parent={parent},steps=2",
                    str(tmp_path_factory.mktemp("cpt") / "run"),
                    "--config.optim.schedule.warmup_steps=1", "--config.data.seq_len=64",
                    "--config.train.global_batch=8", "--config.ckpt.every=1")


def _run_data_config(workdir):
  with open(os.path.join(workdir, "config.json")) as f:
    return json.load(f)


def _hf_heldout_losses(parent, data_config, seq_len, global_batch):
  """{domain: mean next-token NLL} of the HF model over the stage's held-out batches."""
  model = transformers.AutoModelForCausalLM.from_pretrained(parent, dtype=torch.float32).eval()
  batches = data_lib.make_eval_batches(ml_collections.ConfigDict(data_config),
                                       tokenizer_path=data_config["tokenizer"]["path"],
                                       seq_len=seq_len, global_batch=global_batch)
  out, bos_starts = {}, 0
  bos = tokenizer_lib.load(parent).bos_id
  for domain, bs in batches.items():
    nats = count = 0.0
    for b in bs:
      for r in range(b["inputs"].shape[0]):
        seg = b["segment_ids"][r]
        for s in np.unique(seg[seg > 0]):
          cols = np.nonzero(seg == s)[0]
          ids = torch.as_tensor(b["inputs"][r, cols][None], dtype=torch.long)
          pos = torch.as_tensor(b["positions"][r, cols][None], dtype=torch.long)
          bos_starts += int(b["inputs"][r, cols[0]] == bos and b["positions"][r, cols[0]] == 0)
          with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids, position_ids=pos).logits[0].double(), -1)
          nll = -logp[np.arange(len(cols)), b["targets"][r, cols]].numpy()
          mask = b["loss_mask"][r, cols].astype(np.float64)
          nats, count = nats + float((nll * mask).sum()), count + float(mask.sum())
    out[domain] = nats / count
  # documents framed with the parent's own BOS (id 400, not maxlm's 2); a long
  # document's later chunks restart positions without one (data.long_doc_policy)
  assert bos_starts >= len(out)
  return out


@pytest.mark.slow  # the stage runs as a subprocess (~40 s on 2 cores)
def test_cpt_from_hf_dir_uses_the_parents_tokenizer(cpt_run, parent):
  c = _run_data_config(cpt_run)
  assert c["data"]["tokenizer"]["path"] == parent
  assert (c["model"]["sliding_window"], c["model"]["qkv_bias"]) == (WINDOW, False)
  manifest = json.load(open(os.path.join(cpt_run, "stage_manifest.json")))
  assert manifest["parent"]["kind"] == "hf" and manifest["status"] == "done"


@pytest.mark.slow
def test_step0_heldout_loss_equals_transformers(cpt_run, parent):
  c = _run_data_config(cpt_run)
  step0 = [r for r in read_jsonl(os.path.join(cpt_run, "metrics.jsonl")) if r["step"] == 0]
  assert len(step0) == 1
  ref = _hf_heldout_losses(parent, c["data"], c["data"]["seq_len"], c["train"]["global_batch"])
  assert ref and set(ref) <= {k.split("/")[1] for k in step0[0] if k.endswith("/loss")}
  for domain, want in ref.items():
    got = step0[0][f"eval/{domain}/loss"]
    print(f"step-0 held-out loss {domain}: maxlm {got:.6f}  transformers {want:.6f}")
    assert abs(got - want) < 1e-4 * want, domain
  # and training moved it: the stage is not a no-op
  last = [r for r in read_jsonl(os.path.join(cpt_run, "metrics.jsonl")) if r["step"] == 2
          and any(k.endswith("/loss") for k in r)]
  assert last and any(last[-1][f"eval/{d}/loss"] != step0[0][f"eval/{d}/loss"] for d in ref)


@pytest.mark.slow
def test_export_of_a_cpt_checkpoint_round_trips(cpt_run, parent, tmp_path):
  out = str(tmp_path / "hf")
  export.export_run(cpt_run, out, step=1)
  for name in ("tokenizer.json", "tokenizer_config.json"):  # the parent's, as they were
    assert open(os.path.join(out, name), "rb").read() == open(os.path.join(parent, name),
                                                              "rb").read()
  cfg, params, tok = generate.load_model(cpt_run, step=1)
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  text = "def load_model(path):\n    return None\n" * 3  # longer than the window
  ids = hf_tok(text)["input_ids"]
  assert ids == [tok.bos_id] + tok.encode(text)
  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert isinstance(model, transformers.MistralForCausalLM)
  assert model.config.pad_token_id is None  # EOS is no padding_idx: its embedding row trains
  assert model.config.sliding_window == WINDOW and len(ids) > WINDOW
  with torch.no_grad():
    ref = model(torch.as_tensor([ids])).logits.numpy()
  got = np.asarray(maxlm.forward(cfg, params, np.asarray([ids], np.int32)))
  assert float(np.max(np.abs(got - ref)) / np.max(np.abs(ref))) < 1e-4


def _step0(workdir):
  (row,) = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["step"] == 0]
  return row


@pytest.mark.slow
def test_anneal_and_long_context_from_an_hf_parent(parent, tmp_path):
  anneal = _run_stage(f"configs/anneal.py:tiny,parent={parent},steps=1", str(tmp_path / "anneal"),
                      "--config.data.seq_len=64", "--config.train.global_batch=8")
  c = _run_data_config(anneal)
  assert c["data"]["tokenizer"]["path"] == parent and c["model"]["sliding_window"] == WINDOW
  assert (c["init"]["carry"], c["init"]["lr_from_parent"]) == ("params", "")
  ref = _hf_heldout_losses(parent, c["data"], 64, 8)
  for domain, want in ref.items():
    assert abs(_step0(anneal)[f"eval/{domain}/loss"] - want) < 1e-4 * want, domain

  long_dir = _run_stage(f"configs/long_context.py:tiny,parent={parent},orig=64,lengths=64/128,"
                        "steps=1", str(tmp_path / "long"), "--config.train.tokens_per_step=1024",
                        "--config.optim.schedule.warmup_steps=1",
                        "--config.train.global_batch=16", "--config.data.seq_len=64")
  for sub in ("len_64", "len_128"):
    c = _run_data_config(os.path.join(long_dir, sub))
    assert c["data"]["tokenizer"]["path"] == parent
    assert (c["model"]["vocab_size"], c["model"]["sliding_window"]) == (512, WINDOW)
    assert c["model"]["rope_scaling"]["rope_type"] == "yarn"
  assert np.isfinite(list(v for k, v in _step0(os.path.join(long_dir, "len_64")).items()
                          if k.endswith("/loss"))).all()
