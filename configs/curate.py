"""Data curation config (maxlm.curate, issue 9).

  python -m maxlm.curate --config=configs/curate.py:default \
      --input='raw/*.jsonl.zst,raw/*.parquet' --output=curated/ [Beam flags]

Variants (the part after ':', comma-separated):
  default   every stage: normalise, language ID, Gopher repetition + quality, C4
            lines, FineWeb rules, exact and near dedup, decontamination; the
            stages that need an input (classifier model, model_score workdir) and
            boilerplate line removal are off until configured
  dedup     read, normalise, exact and near dedup only
  code      adds nothing; switches off the rules that reject source code (C4's
            curly bracket, terminal punctuation) -- combine: "default,code"
  runlocal  small shards and 2 workers, for tests and laptops
  prepare   plain .jsonl shards, which `python -m maxlm.data.prepare` reads as a jsonl source
Every threshold below is the published default; its source is on the line.
"""

import ml_collections


def get_config(arg: str = "default"):
  variants = set(filter(None, (arg or "default").split(",")))
  c = ml_collections.ConfigDict()
  c.num_workers = 0  # DirectRunner processes; 0 = one per core

  c.read = dict(
      text_field="text",          # JSONL key / Parquet column holding the text
      id_field="id",              # record id when present; else file:line
      max_error_fraction=0.01,    # unreadable records / all records before the run fails
  )
  c.normalize = dict(enabled=True, fix_mojibake=True, nfc=True, strip_control=True,
                     collapse_whitespace=True)
  c.langid = dict(
      enabled=True,
      languages=("en",),          # kept languages (ISO 639-1); () keeps every language
      threshold=0.65,             # FineWeb keeps fastText en score >= 0.65; same number on CLD2's byte share
  )
  # Rae et al. 2021 (Gopher), appendix A, table A1.
  c.gopher_repetition = dict(
      enabled=True,
      max_dup_line_frac=0.30, max_dup_para_frac=0.30,
      max_dup_line_char_frac=0.20, max_dup_para_char_frac=0.20,
      top_ngram_max_char_frac=((2, 0.20), (3, 0.18), (4, 0.16)),
      dup_ngram_max_char_frac=((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)),
  )
  c.gopher_quality = dict(
      enabled=True,
      min_words=50, max_words=100_000,                 # words per document
      min_mean_word_length=3.0, max_mean_word_length=10.0,  # characters
      max_symbol_word_ratio=0.1,                       # '#' and '...' per word, each
      max_bullet_lines_ratio=0.9, max_ellipsis_lines_ratio=0.3,
      min_alpha_words_ratio=0.8,                       # words with an alphabetic character
      min_stop_words=2,                                # of: the be to of and that have with
  )
  # Raffel et al. 2020 (C4), section 2.2; sentences/line words as in the TFDS c4 builder.
  c.c4 = dict(
      enabled=True, min_words_per_line=5, min_sentences=3, drop_javascript=True,
      drop_policy=True, drop_lorem_ipsum=True, drop_curly_bracket=True, max_word_length=1000,
      bad_words=(),               # C4 used the LDNOOBW list; not shipped, give words here
  )
  # Penedo et al. 2024 (FineWeb), section 3.3.
  c.fineweb = dict(enabled=True, max_line_punct_frac=0.12, max_dup_line_char_frac=0.1,
                   max_short_line_frac=0.67, short_line_length=30)
  # fastText-style classifier (maxlm/curate/classifier.py), trained with
  # `python -m maxlm.curate train-classifier`; off until a model is given.
  c.classifier = dict(
      enabled=False,
      model="",                   # .npz written by train-classifier
      positive_label="",          # binary models: score = P(this label); "" = "positive" (the 2nd sorted label)
      score_field="quality_score",  # meta field; dedup keeps the highest quality_score per group
      label_field="",             # several labels (domains): meta field for the top label, e.g. "domain"
      min_score=0.0,              # removed below this score (rule classifier_score); 0 keeps all
  )
  # Mean token log-prob under a maxlm model (CCNet-style perplexity filter; maxlm/curate/modelscore.py).
  c.model_score = dict(
      enabled=False,
      workdir="",                 # maxlm workdir with params/, config.json, tokenizer/
      tokenizer="",               # "" = <workdir>/tokenizer/tokenizer.model or config's data.tokenizer.path
      seq_len=512,                # tokens scored per document (its head)
      batch_size=16,              # documents per forward pass (fixed shape: one compile per worker)
      max_perplexity=0.0,         # removed above this perplexity (rule model_perplexity); 0 keeps all
      min_tokens=1,               # documents with fewer predicted tokens are removed (model_too_short)
      score_field="model_logprob",
  )
  c.exact_dedup = dict(enabled=True, score_field="quality_score")
  # Lines found in >= min_docs documents are dropped (navigation, cookie banners, footers);
  # off by default: on small corpora 10 documents can share real text (a quoted line).
  c.boilerplate = dict(enabled=False, min_docs=10, min_line_chars=1)
  # Lee et al. 2022 / FineWeb: MinHash over word 5-grams.
  c.near_dedup = dict(
      enabled=True,
      ngram=5,                    # words per shingle
      num_perm=256,               # permutations: the estimate's std error sqrt(J(1-J)/256) = 0.025 at J=0.8,
                                  # small enough for >= 95% recall at J+0.05 and <= 5% false pairs at J-0.05
      threshold=0.8,              # Jaccard at which two documents are near-duplicates
      bands=0, rows=0,            # 0 = chosen from threshold and fn_weight: b=25, r=10 here; FineWeb: 14 x 8
      fn_weight=0.95,             # LSH choice weighs missed pairs 0.95, false candidates 0.05: verify
                                  # removes false candidates, nothing recovers a missed pair
      verify=True,                # keep an LSH candidate pair only if its estimated Jaccard >= threshold
      max_verify=32,              # earlier bucket members a document is checked against
      seed=1,                     # permutations; must be equal across runs that share signatures
      cc="union_find",            # clusters: union-find on one worker (duplicates must fit it), or
                                  # "rounds": distributed large-star/small-star rounds
      cc_max_nodes=4_000_000,     # union_find: documents with a near duplicate before the run stops (~1 GB)
      cc_rounds=8,                # rounds: unrolled; the run fails if too few
      score_field="quality_score",  # kept per cluster: highest meta score, then smallest id
  )
  # Brown et al. 2020 (GPT-3), appendix C: 13-gram overlap.
  c.decontam = dict(enabled=True, eval_files=(), ngram=13, mode="remove", mask="")
  c.write = dict(
      num_shards=4,               # shards per partition
      partition_by="domain",      # meta field naming the partition (domain label)
      default_partition="default",
      rejects_keep_text=True,     # rejects carry their text, to audit the rules
      compression="zstd",         # "zstd" (.jsonl.zst) or "none" (.jsonl: maxlm.data.prepare's jsonl source)
      charts=True,                # PNG charts next to summary.md
  )

  if "dedup" in variants:
    for stage in ("langid", "gopher_repetition", "gopher_quality", "c4", "fineweb", "decontam"):
      c[stage].enabled = False
  if "code" in variants:
    c.c4.drop_curly_bracket = False
    c.c4.enabled = False
    c.fineweb.enabled = False
  if "prepare" in variants:
    c.write.compression = "none"
  if "runlocal" in variants:
    c.num_workers = 2
    c.write.num_shards = 1
  return c
