"""Evaluation: log-prob scoring, perplexity and bits per byte, probes, lm-eval model.

Everything scores text through `maxlm.forward` (the one public forward) and
generates through maxlm.generate; the tokenizer is the only thing taken from
maxlm.data. `lm_eval_model` imports lm-eval, an optional extra, so it is not
imported here.
"""
from maxlm.eval.scoring import score_continuations, rolling_windows
from maxlm.eval.perplexity import (bits_per_byte, heldout_bytes, heldout_metrics,
                                   score_texts, token_byte_lengths)
