"""Chat templates: the Jinja strings Hugging Face tokenizer folders carry, rendered safely.

Fox-1-1.6B-Instruct writes conversations in Gemma's turn format (`<start_of_turn>user ... <end_of_turn>`);
`DEFAULT_CHAT_TEMPLATE` is that format, and a model folder's own tokenizer_config.json template is used instead
where it has one. A downloaded template is code: it is rendered in jinja2's immutable sandbox, with its loops and
its output bounded, so it can read its inputs but change nothing, call no unsafe method and never hang.
data.encode_chat turns a rendered conversation into token ids and the loss mask of the replies.
"""
from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from fox1.files import InputError, read_text

# Fox-1-Instruct's turn format (Gemma's): each turn is "<start_of_turn>ROLE\n" + content + "<end_of_turn>\n", the
# assistant's role is called "model", and a reply ends with <end_of_turn>, where generation stops. A system message
# is folded into the first user turn as Gemma does ("<system>\n\n<user>"), so the model only ever sees two roles.
# Contents are kept verbatim (Gemma trims them), so rendering and parsing round-trip exactly.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\\n\\n' %}{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ('user', 'assistant') %}"
    "{{ raise_exception('unknown role ' ~ message['role'] ~ ' (system first, then user/assistant)') }}{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate user/assistant/user/... after an optional system message') }}"
    "{% endif %}"
    "{{ '<start_of_turn>' ~ ('model' if message['role'] == 'assistant' else 'user') ~ '\\n' }}"
    "{{ (system if loop.first else '') ~ message['content'] ~ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
CHAT_ROLES = ("system", "user", "assistant")


class ChatTemplateError(InputError):
    """A conversation the template refuses (its raise_exception), or a template that cannot be used."""


def load_chat_template(directory: str | Path) -> str | None:
    """The "chat_template" of a model folder's tokenizer_config.json, or None when it has none. Hugging Face
    stores one Jinja string, or a list of {"name", "template"} of which "default" is the chat one."""
    path = Path(directory) / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise InputError(f"{path}: cannot read ({error})") from None
    if isinstance(template, list):
        named = {item.get("name"): item.get("template") for item in template if isinstance(item, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise ChatTemplateError(f"{path}: chat_template must be a string or a list with a 'default' template")
    return template


# A render may take this long and write this much before it is refused: a template with nested loops over
# range(100000) would otherwise hang the command, and one that repeats a string could fill the memory.
RENDER_SECONDS = 10.0
RENDER_CHARS = 1 << 24


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus a deadline that every loop step over range() and every * or ** checks."""

    intercepted_binops = frozenset(["*", "**"])
    deadline = 0.0

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise ChatTemplateError(f"chat template: rendering took over {RENDER_SECONDS:.0f} s; refusing it")

    def call_binop(self, context, operator, left, right):
        self.check_time()
        if operator == "*" and isinstance(left, (str, list)) and isinstance(right, int) and \
                len(left) * right > RENDER_CHARS:
            raise ChatTemplateError(f"chat template: an expression would make over {RENDER_CHARS:,} characters")
        if operator == "**" and isinstance(right, int) and right > 1024:
            raise ChatTemplateError("chat template: an exponent over 1024; refusing it")
        return super().call_binop(context, operator, left, right)

    def bounded_range(self, *args):
        for i, value in enumerate(range(*args)):
            if i % 1024 == 0:
                self.check_time()
            yield value


@lru_cache(maxsize=8)
def _compiled_template(template: str):
    """The template compiled in a sandbox, with Hugging Face's environment (trim_blocks, lstrip_blocks,
    loop controls, raise_exception, strftime_now)."""
    def raise_exception(message: str):
        raise ChatTemplateError(f"chat template: {message}")

    env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: time.strftime(fmt),
                       range=env.bounded_range)
    try:
        return env.from_string(template)
    except TemplateError as error:
        raise ChatTemplateError(f"chat template does not compile: {error}") from None


def render_chat(template: str, messages: list[dict], *, bos_token: str, eos_token: str,
                add_generation_prompt: bool = False) -> str:
    """The conversation as text, through the sandboxed template (HF's variables: messages, bos_token,
    eos_token, add_generation_prompt), refused in one line past RENDER_SECONDS or RENDER_CHARS."""
    compiled = _compiled_template(template)
    compiled.environment.deadline = time.monotonic() + RENDER_SECONDS
    pieces, size = [], 0
    try:
        for piece in compiled.generate(messages=messages, bos_token=bos_token, eos_token=eos_token,
                                       add_generation_prompt=add_generation_prompt):
            size += len(piece)
            if size > RENDER_CHARS:
                raise ChatTemplateError(f"chat template: rendered over {RENDER_CHARS:,} characters; refusing it")
            compiled.environment.check_time()
            pieces.append(piece)
    except (TemplateError, RecursionError, OverflowError, MemoryError) as error:
        raise ChatTemplateError(f"chat template failed: {type(error).__name__}: {error}") from None
    return "".join(pieces)


def check_conversation(messages: object) -> None:
    """Raise ValueError naming what is wrong unless `messages` is a list of {"role", "content": str} with known
    roles, system (if any) first, and at least one assistant reply to learn from."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise ValueError(f"message {i}: role must be one of {', '.join(CHAT_ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {i}: content must be a string")
        if message["role"] == "system" and i > 0:
            raise ValueError(f"message {i}: a system message may only come first")
    if not any(message["role"] == "assistant" for message in messages):
        raise ValueError("no assistant turn")


def resolve_chat_template(template_path: Path | None, tokenizer_path: Path) -> str:
    """The template to render with: template_path (a folder's tokenizer_config.json or a Jinja file), else the
    tokenizer folder's own, else ours."""
    if template_path is None:
        folder = Path(tokenizer_path)
        return (load_chat_template(folder) if folder.is_dir() else None) or DEFAULT_CHAT_TEMPLATE
    if Path(template_path).is_dir():
        template = load_chat_template(template_path)
        if template is None:
            raise ChatTemplateError(f"{template_path}: no tokenizer_config.json with a chat_template")
        return template
    return read_text(Path(template_path))
