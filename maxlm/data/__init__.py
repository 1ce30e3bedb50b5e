"""maxlm.data: sources, tokenizer, Grain pipelines (pack, mix, shard, resume).

Public API (what the training driver calls):
  build_tokenizer(data_config, workdir) -> path of a SentencePiece .model
  make_train_iterator(data_config, *, tokenizer_path, seq_len, global_batch,
                      seed, process_index=0, process_count=1)
      -> grain.DatasetIterator of per-host batches (dicts of numpy arrays)
  make_eval_batches(data_config, *, tokenizer_path, seq_len, global_batch, ...)
      -> {domain: [batch, ...]} of held-out documents
  domain_names(data_config) -> list[str]   (index = domain id)
  default_data_config() -> ml_collections.ConfigDict
  reuse_report(iterator) -> {source: tokens, docs_served, epochs, ...}
  write_reports(data_config, iterator, workdir) -> table (also written there)
  error_report(data_config) -> str         (bad input per file)

Names are imported on first use (PEP 562): a stage config that imports
`maxlm.data.config` must not pull in the Grain pipeline and with it jax.

Never imports maxlm.model or maxlm.train.
"""
import importlib

_WHERE = {
    "default_data_config": "config", "domain_names": "config",
    "make_eval_batches": "pipeline", "make_train_iterator": "pipeline",
    "error_report": "reports", "reuse_report": "reports", "write_reports": "reports",
    "DataErrorBudgetExceeded": "sources", "build_tokenizer": "tokenizer",
}
__all__ = sorted(_WHERE)


def __getattr__(name):
  if name not in _WHERE:
    raise AttributeError(f"module 'maxlm.data' has no attribute {name!r}")
  return getattr(importlib.import_module(f"maxlm.data.{_WHERE[name]}"), name)
