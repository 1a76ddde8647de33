"""Tests for fox1/chat_template.py: Gemma's turn format, templates from model folders, and the bounded sandbox
(a downloaded template is code: it may read its inputs, nothing else, and must not hang)."""
import json

import pytest

from fox1 import chat_template
from fox1.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplateError, load_chat_template, render_chat

EXCHANGE = [{"role": "user", "content": "Add two numbers."}, {"role": "assistant", "content": "a + b"}]


def test_default_template_renders_gemma_turns():
    text = render_chat(DEFAULT_CHAT_TEMPLATE, [{"role": "system", "content": "Be brief."}] + EXCHANGE,
                       bos_token="<bos>", eos_token="<eos>", add_generation_prompt=False)
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nAdd two numbers.<end_of_turn>\n"
                    "<start_of_turn>model\na + b<end_of_turn>\n")


def test_folder_templates_string_list_and_damaged(tmp_path):
    assert load_chat_template(tmp_path) is None
    for stored in ("{{ bos_token }}", [{"name": "tool_use", "template": "x"}, {"name": "default",
                                                                             "template": "{{ bos_token }}"}]):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": stored}))
        assert load_chat_template(tmp_path) == "{{ bos_token }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": 12}))
    with pytest.raises(ChatTemplateError, match="must be a string"):
        load_chat_template(tmp_path)


@pytest.mark.parametrize("template, message", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took over"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxx{% endfor %}{% endfor %}", "over"),
    ("{{ 'x' * 100000000 }}", "would make over"),
    ("{{ 2 ** 100000000 }}", "exponent"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "failed"),
    ("{% for %}", "does not compile"),
])
def test_a_hostile_template_is_refused_in_one_line_and_never_hangs(monkeypatch, template, message):
    monkeypatch.setattr(chat_template, "RENDER_SECONDS", 0.5)
    with pytest.raises(ChatTemplateError, match=message) as refused:
        render_chat(template, EXCHANGE, bos_token="<bos>", eos_token="<eos>")
    assert "\n" not in str(refused.value)
