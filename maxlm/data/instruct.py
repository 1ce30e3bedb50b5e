"""Instruction records -> token ids and a response-only mask, for pretraining mixes.

An instruction source (`data.sources.<x>.kind = "instruct"`) is JSONL, one record
per line, in either form:

  {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
  {"prompt": "...", "response": "..."}

`messages` are rendered with the tokenizer's chat template (an HF model directory's
tokenizer_config.json `chat_template`, or its chat_template.jinja) exactly as
transformers' `apply_chat_template(messages, tokenize=True)` renders and tokenizes
them: the same sandboxed jinja2 environment and the same template variables, the text
encoded whole without special tokens added. `prompt` / `response` records need no
template: the prompt's ids followed by the response's ids, each encoded on its own (the
split a model meets at inference, where the prompt is given and the response sampled).

The mask marks the tokens the model should learn to produce: the assistant turns (their
content and the template's end-of-turn text after it), or the response. Everything else
(system and user turns, the template's role headers, the generation prompt
"<|im_start|>assistant\\n", the prompt) is context only.

Which characters are an assistant turn is found by rendering prefix by prefix, for each
assistant message k:
  p = render(messages[:k], add_generation_prompt=True)   # ... up to the assistant header
  q = render(messages[:k+1])                              # ... through its end of turn
  the turn is characters [len(p), len(q)) of the full rendering.
This works with any template that renders a conversation as the concatenation of its
turns (ChatML, Llama 3, Mistral, Qwen2 do), where marker strings or `{% generation %}`
blocks would need the template to be edited; a template for which p or q is not a prefix
of the full rendering is refused (naming the record), never guessed at. A token is in the
mask when its characters overlap a turn (transformers' own rule for
`return_assistant_tokens_mask`), so a BPE merge across the boundary keeps the token.

BOS / EOS framing (data.add_bos / data.add_eos, the tokenizer's own ids): many templates
write the BOS text themselves (Llama 3's "{{ bos_token }}"), so BOS is prepended only when
the encoded text does not already start with it, and EOS appended only when it does not
already end with it (Llama 2 / Mistral templates close assistant turns with "</s>"): never
doubled. A prepended BOS is context (mask 0); an appended EOS is a response token when the
record ends with the response (the model learns to stop there), else context.

Record checks (`check_record`) run when the source is indexed and count bad records in the
source's ErrorLog under the data error budget, naming file, line and field; a `messages`
record with a tokenizer that has no chat template stops the run before training
(`check_tokenizer`).
"""

from __future__ import annotations

import functools
import json

import numpy as np

ROLES = ("system", "user", "assistant", "tool")
RESPONSE_ROLE = "assistant"
MESSAGES, PROMPT_RESPONSE = "messages", "prompt_response"


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------

def check_record(rec) -> tuple[str, str, str]:
  """(form, error kind, detail) of a parsed JSONL record; error kind '' when it is good.

  form: MESSAGES or PROMPT_RESPONSE (or '' when neither can be told). The detail names
  the field, e.g. "messages[2].role='human': expected one of system, user, assistant, tool".
  """
  if not isinstance(rec, dict):
    return "", "wrong_type", f"record is a JSON {type(rec).__name__}, expected an object"
  has_messages = "messages" in rec
  has_pr = "prompt" in rec or "response" in rec
  if has_messages and has_pr:
    return "", "wrong_type", "record has both 'messages' and 'prompt'/'response': give one form"
  if has_messages:
    return MESSAGES, *_check_messages(rec["messages"])
  if not has_pr:
    return "", "missing_field", "no 'messages' list and no 'prompt'/'response' strings"
  for field in ("prompt", "response"):
    if field not in rec:
      return PROMPT_RESPONSE, "missing_field", f"no {field!r} string"
    if not isinstance(rec[field], str):
      return PROMPT_RESPONSE, "wrong_type", (f"{field!r} is a JSON {type(rec[field]).__name__},"
                                             " expected a string")
  if not rec["response"].strip():
    return PROMPT_RESPONSE, "no_response", "'response' is empty: nothing to learn from"
  return PROMPT_RESPONSE, "", ""


def _check_messages(messages) -> tuple[str, str]:
  if not isinstance(messages, list) or not messages:
    return "wrong_type", "'messages' must be a non-empty list of {role, content} objects"
  for i, m in enumerate(messages):
    if not isinstance(m, dict):
      return "wrong_type", f"messages[{i}] is a JSON {type(m).__name__}, expected an object"
    for field in ("role", "content"):
      if field not in m:
        return "missing_field", f"messages[{i}] has no {field!r}"
    if not isinstance(m["role"], str) or m["role"] not in ROLES:
      return "unknown_role", f"messages[{i}].role={m['role']!r}: expected one of {', '.join(ROLES)}"
    if not isinstance(m["content"], str):
      return "wrong_type", (f"messages[{i}].content is a JSON {type(m['content']).__name__},"
                            " expected a string")
  if not any(m["role"] == RESPONSE_ROLE and m["content"].strip() for m in messages):
    return "no_response", "no non-empty 'assistant' message: nothing to learn from"
  return "", ""


def plain_text(json_line: str) -> str:
  """The words of a checked record without its JSON syntax (contents joined by newlines,
  or prompt + response): what a tokenizer trained on the sources should see of it."""
  rec = json.loads(json_line)
  if "messages" in rec:
    return "\n".join(m["content"] for m in rec["messages"])
  return rec["prompt"] + rec["response"]


def check_tokenizer(source_name: str, first_messages: str | None, tok) -> None:
  """Refuses a source with `messages` records when the tokenizer has no chat template.

  first_messages: "path:line" of the source's first `messages` record (None: it has none).
  """
  if first_messages and not tok.chat_template:
    raise ValueError(
        f"data.sources.{source_name}: {first_messages}: a 'messages' record needs a chat"
        f" template, and tokenizer {tok.path} has none (give data.tokenizer.path an HF model"
        " directory whose tokenizer_config.json has chat_template, or use prompt/response"
        " records)")


# ---------------------------------------------------------------------------
# The chat template, rendered as transformers renders it
# ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _compiled(template: str):
  """The template in transformers' environment: sandboxed (templates from the Hub are
  untrusted code), trim_blocks + lstrip_blocks, loopcontrols, its tojson (no HTML
  escaping), raise_exception and strftime_now."""
  import datetime  # pylint: disable=g-import-not-at-top
  import jinja2  # pylint: disable=g-import-not-at-top
  import jinja2.ext  # pylint: disable=g-import-not-at-top
  from jinja2.sandbox import ImmutableSandboxedEnvironment  # pylint: disable=g-import-not-at-top

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(template)


def special_tokens(tok) -> dict[str, str]:
  """bos_token / eos_token, the variables of transformers' special_tokens_map that chat
  templates read (pad / unk are not passed: no template in use writes them)."""
  return {name: tok.id_to_piece(i) for name, i in (("bos_token", tok.bos_id),
                                                   ("eos_token", tok.eos_id)) if i is not None}


def render(template: str, messages: list[dict], *, add_generation_prompt: bool = False,
           **variables) -> str:
  """The rendered text of a conversation (apply_chat_template(..., tokenize=False))."""
  # transformers drops keys whose value is None before rendering, and copies a message's
  # reasoning (under any of its names) to the two names templates read.
  messages = [_alias_reasoning({k: v for k, v in m.items() if v is not None}) for m in messages]
  return _compiled(template).render(messages=messages, tools=None, documents=None,
                                    add_generation_prompt=add_generation_prompt, **variables)


def _alias_reasoning(m: dict) -> dict:
  reasoning = next((m[k] for k in ("reasoning_content", "thinking", "reasoning") if k in m), None)
  return m if reasoning is None else {"thinking": reasoning, **m, "reasoning_content": reasoning}


def render_with_spans(template: str, messages: list[dict],
                      **variables) -> tuple[str, list[tuple[int, int]]]:
  """(rendered text, [start, end) characters of every assistant turn), prefix by prefix
  (module docstring). ValueError when the template does not render prefixes as prefixes."""
  full = render(template, messages, **variables)
  spans = []
  for k, m in enumerate(messages):
    if m["role"] != RESPONSE_ROLE:
      continue
    p = render(template, messages[:k], add_generation_prompt=True, **variables)
    q = render(template, messages[:k + 1], **variables)
    if not (q.startswith(p) and full.startswith(q)):
      raise ValueError(f"the chat template does not render messages[:{k + 1}] as a prefix of"
                       f" the whole conversation, so assistant turn {k} cannot be located")
    spans.append((len(p), len(q)))
  return full, spans


# ---------------------------------------------------------------------------
# Records -> ids and mask
# ---------------------------------------------------------------------------

def encode(rec: dict, tok, *, bos_id: int | None, eos_id: int | None
           ) -> tuple[np.ndarray, np.ndarray]:
  """(ids [n] int32, response mask [n] int32: 1 = a token of the response) of a checked
  record, framed by bos / eos (None = none added) as the module docstring says."""
  if "messages" in rec:
    if not tok.chat_template:
      raise ValueError(f"a 'messages' record needs a chat template; {tok.path} has none")
    text, spans = render_with_spans(tok.chat_template, rec["messages"], **special_tokens(tok))
    ids, offsets = tok.encode_offsets(text)
    mask = _overlaps(offsets, spans)
    ends_with_response = rec["messages"][-1]["role"] == RESPONSE_ROLE
  else:
    prompt, response = tok.encode(rec["prompt"]), tok.encode(rec["response"])
    ids, mask = prompt + response, [0] * len(prompt) + [1] * len(response)
    ends_with_response = True
  if bos_id is not None and (not ids or ids[0] != bos_id):
    ids, mask = [bos_id] + ids, [0] + mask
  if eos_id is not None and (not ids or ids[-1] != eos_id):
    ids, mask = ids + [eos_id], mask + [int(ends_with_response)]
  return np.asarray(ids, np.int32), np.asarray(mask, np.int32)


def _overlaps(offsets, spans) -> list[int]:
  """1 for each token whose [start, end) characters overlap a span (spans and offsets in
  order, so one pass), as transformers builds its assistant mask. A zero-width token (the
  leading byte pieces of a character under SentencePiece byte fallback) counts as covering
  its next character, so all bytes of a character fall on the same side."""
  mask, j = [0] * len(offsets), 0
  for t, (start, end) in enumerate(offsets):
    end = max(end, start + 1)
    while j < len(spans) and start >= spans[j][1]:
      j += 1
    if j == len(spans):
      break
    if end > spans[j][0]:
      mask[t] = 1
  return mask
