"""Instruction records against transformers: chat-template text and ids equal
`apply_chat_template`'s, and the response mask equals its `{% generation %}` assistant mask.

The fixtures (a byte-level BPE tokenizer.json and HF directories with chat templates) are
test_data_instruct.py's; transformers is the test-only reference (the `reference` extra),
so this file runs on the Python 3.11 stack only (.ci/run).
"""
import pytest

import transformers  # noqa: E402  (the `reference` extra)

pytestmark = pytest.mark.torch  # not run on the Python 3.12 CI stack (.ci/run)

from maxlm.data import instruct  # noqa: E402
from maxlm.data import tokenizer as tokenizer_lib  # noqa: E402

from test_data_instruct import CHATS, _hf_dir, dirs, tok_json  # noqa: E402,F401  (fixtures)


@pytest.mark.parametrize("name", ["chatml", "llama3", "mistral"])
def test_rendering_and_ids_equal_transformers(dirs, name):
  hf = transformers.AutoTokenizer.from_pretrained(dirs[name])
  tok = tokenizer_lib.load(dirs[name])
  chats = CHATS if name != "mistral" else [[m for m in c if m["role"] != "system"] for c in CHATS]
  for chat in chats:
    for gen in (False, True):
      text = instruct.render(tok.chat_template, chat, add_generation_prompt=gen,
                             **instruct.special_tokens(tok))
      assert text == hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
      ids, _ = tok.encode_offsets(text)
      ref = hf.apply_chat_template(chat, tokenize=True, add_generation_prompt=gen)
      ref = ref["input_ids"] if hasattr(ref, "keys") else ref
      assert ids == list(ref)


def test_extra_message_fields_render_as_transformers(tok_json, tmp_path):
  """Reasoning under any of its names reaches `thinking`; None-valued keys are dropped."""
  t = ("{% for m in messages %}{{ m['role'] }}:{% if m.thinking %}<think>{{ m.thinking }}"
       "</think>{% endif %}{% if m.name is defined %}[{{ m.name }}]{% endif %}{{ m['content'] }}"
       "\n{% endfor %}")
  d = _hf_dir(str(tmp_path), tok_json, "think", t, None, "</s>")
  hf = transformers.AutoTokenizer.from_pretrained(d)
  chat = [{"role": "user", "content": "q", "name": None},
          {"role": "assistant", "content": "a", "reasoning": "because"}]
  assert instruct.render(t, chat) == hf.apply_chat_template(chat, tokenize=False)
  assert "<think>because</think>" in instruct.render(t, chat) and "[" not in instruct.render(t, chat)


def test_mask_equals_transformers_generation_mask(dirs):
  """transformers' return_assistant_tokens_mask on the {% generation %} twin of the template."""
  hf = transformers.AutoTokenizer.from_pretrained(dirs["chatml_gen"])
  tok = tokenizer_lib.load(dirs["chatml"])
  for chat in CHATS:
    ids, mask = instruct.encode({"messages": chat}, tok, bos_id=None, eos_id=None)
    ref = hf.apply_chat_template(chat, tokenize=True, return_dict=True,
                                 return_assistant_tokens_mask=True)
    assert ids.tolist() == list(ref["input_ids"])
    assert mask.tolist() == list(ref["assistant_masks"]) and mask.sum() > 0
