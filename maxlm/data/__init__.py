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

Never imports maxlm.model or maxlm.train.
"""
from maxlm.data.config import default_data_config, domain_names
from maxlm.data.pipeline import make_eval_batches, make_train_iterator
from maxlm.data.reports import error_report, reuse_report, write_reports
from maxlm.data.sources import DataErrorBudgetExceeded
from maxlm.data.tokenizer import build_tokenizer

__all__ = ["DataErrorBudgetExceeded", "build_tokenizer", "default_data_config",
           "domain_names", "error_report", "make_eval_batches",
           "make_train_iterator", "reuse_report", "write_reports"]
