"""`python -m maxlm.interop.export`: a maxlm run -> an HF directory transformers loads alike.

The run directory is built here as a finished run leaves it (config.json, params/
export, done.json, the tokenizer) with a tiny random model, for the two tokenizer
origins: maxlm's own SentencePiece model (exported as a converted tokenizer.json)
and an HF parent directory (its files copied as they were). The references:
transformers' AutoTokenizer ids against maxlm's (BOS framing included) and
AutoModelForCausalLM's float32 logits against maxlm.forward's, relative to the
logit scale. The export of a real training run (--step) is in test_interop_cpt.py.
"""
import json
import os
import stat

import numpy as np
import pytest

import torch  # noqa: E402  (the `reference` extra)
import transformers  # noqa: E402

from hf_fixtures import (byte_level_bpe, hf_logits, random_maxlm_params, rel_err,  # noqa: E402
                         save_hf_tokenizer)

pytestmark = pytest.mark.torch  # not run on the Python 3.12 CI stack (.ci/run)

import maxlm  # noqa: E402
from maxlm import cli  # noqa: E402
from maxlm.checkpoint import export_params  # noqa: E402
from maxlm.data import tokenizer as tokenizer_lib  # noqa: E402
from maxlm.interop import export  # noqa: E402

RTOL = 1e-4
TEXT = ("The quick brown fox jumps over the lazy dog.\n    indented code = 1\n"
        "def f(x):\n    return x * 2  # twice\n数字 3.14 and émigré ☃\n") * 20
PROBES = ["hello world", " leading space", "mid-word\n\tand tabs  ", "def g(y): return y"]


def _model(vocab, **kw):
  return maxlm.ModelConfig(**{**dict(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4,
                                     n_kv_heads=2, head_dim=16, d_ff=96), **kw})


def _finished_run(workdir, cfg, tokenizer_path=""):
  """A workdir as a finished run leaves it; returns (workdir, params)."""
  os.makedirs(workdir, exist_ok=True)
  config = dict(model=dict(cfg.__dict__, rope_scaling=cfg.rope_scaling_dict),
                data=dict(seq_len=64, tokenizer=dict(path=tokenizer_path)))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  params = random_maxlm_params(cfg)
  export_params(params, os.path.join(workdir, "params"))
  with open(os.path.join(workdir, "done.json"), "w") as f:
    json.dump(dict(step=3), f)
  return str(workdir), params


@pytest.fixture(scope="module")
def maxlm_sp_run(tmp_path_factory):
  """A run with maxlm's own trained SentencePiece tokenizer (<s>=2 </s>=3, 384 ids)."""
  root = tmp_path_factory.mktemp("sp_run")
  tok = tokenizer_lib.train_tokenizer([TEXT], str(root / "tokenizer" / "tokenizer.model"),
                                      {"vocab_size": 384, "pad_to_multiple": 128})
  assert tokenizer_lib.special_ids(tok) == (tokenizer_lib.BOS_ID, tokenizer_lib.EOS_ID)
  return _finished_run(root, _model(384))


@pytest.fixture(scope="module")
def hf_parent_dir(tmp_path_factory):
  """An HF tokenizer directory (byte-level BPE, BOS/EOS at the top, a chat template)."""
  tk = byte_level_bpe(TEXT, 300, "<|begin_of_text|>", "<|end_of_text|>")
  root = tmp_path_factory.mktemp("parent")
  save_hf_tokenizer(tk, str(root / "hf"), "<|begin_of_text|>", "<|end_of_text|>",
                    chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
  return str(root / "hf")


def _check_round_trip(workdir, params, cfg, out):
  tok = tokenizer_lib.load(tokenizer_lib_path(workdir))
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  for s in PROBES:
    assert hf_tok(s)["input_ids"] == [tok.bos_id] * tok.add_bos + tok.encode(s), s
  assert (hf_tok.bos_token_id, hf_tok.eos_token_id) == (tok.bos_id, tok.eos_id)
  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert (model.config.bos_token_id, model.config.eos_token_id) == (tok.bos_id, tok.eos_id)
  ids = np.asarray([hf_tok(s)["input_ids"][:6] for s in PROBES], np.int32)
  err = rel_err(maxlm.forward(cfg, params, ids), hf_logits(model, ids))
  print(f"export logits: max|diff|/max|hf logit| = {err:.2e}")
  assert err < RTOL
  for name in os.listdir(out):
    assert stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode) == 0o644, name


def tokenizer_lib_path(workdir):
  from maxlm.checkpoint import rundir  # pylint: disable=g-import-not-at-top
  return rundir.tokenizer_path(workdir)


def test_maxlm_sentencepiece_run_exports_with_a_tokenizer_json(maxlm_sp_run, tmp_path):
  workdir, params = maxlm_sp_run
  out = str(tmp_path / "hf")
  export.export_run(workdir, out)
  assert {"config.json", "model.safetensors", "tokenizer.json",
          "tokenizer_config.json"} <= set(os.listdir(out))
  _check_round_trip(workdir, params, _model(384), out)


def test_run_from_an_hf_parent_exports_the_parents_tokenizer_files(hf_parent_dir, tmp_path):
  vocab = tokenizer_lib.load(hf_parent_dir).vocab_size
  cfg = _model(vocab, qkv_bias=True, tie_embeddings=True)  # a Qwen2-shaped run
  workdir, params = _finished_run(tmp_path / "run", cfg, tokenizer_path=hf_parent_dir)
  out = str(tmp_path / "hf")
  assert cli_main(["--workdir", workdir, "--out", out]) == 0
  for name in os.listdir(hf_parent_dir):  # as they were, byte for byte
    with open(os.path.join(hf_parent_dir, name), "rb") as a, open(os.path.join(out, name), "rb") as b:
      assert a.read() == b.read(), name
  assert transformers.AutoTokenizer.from_pretrained(out).chat_template is not None
  assert json.load(open(os.path.join(out, "config.json")))["model_type"] == "qwen2"
  _check_round_trip(workdir, params, cfg, out)


def cli_main(argv):
  """The entry point as `python -m maxlm.interop.export` runs it; returns the exit status."""
  with pytest.raises(SystemExit) as e:
    cli.run_argparse(export.main, argv)
  return e.value.code


def test_refuses_a_non_empty_out_dir_in_one_line(maxlm_sp_run, tmp_path, capsys):
  workdir, _ = maxlm_sp_run
  out = tmp_path / "hf"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  assert cli_main(["--workdir", workdir, "--out", str(out)]) == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "not empty" in err and str(out) in err
  assert os.listdir(out) == ["keep.txt"]  # untouched
  assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # no temporary left


def test_missing_workdir_and_bad_step_fail_in_one_line(maxlm_sp_run, tmp_path, capsys):
  assert cli_main(["--workdir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
  assert "config.json is missing" in capsys.readouterr().err
  workdir, _ = maxlm_sp_run
  assert cli_main(["--workdir", workdir, "--out", str(tmp_path / "o"), "--step", "7"]) == 1
  assert "step 7 is not a committed checkpoint" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "o")


def test_run_with_a_bare_tokenizer_json_exports_its_specials(hf_parent_dir, tmp_path):
  """A bare tokenizer.json (no config beside it): maxlm's reading of its BOS/EOS is written
  into tokenizer_config.json, so AutoTokenizer frames text as maxlm does."""
  bare = os.path.join(hf_parent_dir, "tokenizer.json")
  tok = tokenizer_lib.load(bare)
  assert tok.bos_id is not None and tok.eos_id is not None and tok.add_bos
  cfg = _model(tok.vocab_size, sliding_window=4)  # a Mistral-shaped run
  workdir, params = _finished_run(tmp_path / "run", cfg, tokenizer_path=bare)
  out = str(tmp_path / "hf")
  export.export_run(workdir, out)
  assert json.load(open(os.path.join(out, "config.json")))["model_type"] == "mistral"
  _check_round_trip(workdir, params, cfg, out)
