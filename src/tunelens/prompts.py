"""Prompt templates: Tk-Instruct style, plain few-shot, and a model's own chat template.

Templates are byte-exact contracts: the embedded world model is trained on the
plain one, the audit reproduces the Tk-Instruct encoding, and hidden states are
read at the prompt's last token, so one stray space changes every measurement.

* ``plain``: ``Definition: {d}\\n\\n`` (optional), then ``Input: {x}\\nOutput: {y}\\n\\n``
  per demonstration, then ``Input: {query}\\nOutput:``.
* ``tk``: ``Definition: {d}\\n\\n`` (optional), then per demonstration i (from 1)
  ``Positive Example {i} -\\nInput: {x}\\nOutput: {y}\\n`` (+ ``Explanation: {e}\\n``
  when explanations are on and the example has one) + ``\\n``, then
  ``Now complete the following example -\\nInput: {query}\\nOutput:``.
* ``chat``: the plain text without its trailing ``\\nOutput:`` as one user turn,
  through ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``
  (a leading BOS the template writes is dropped when the tokenizer adds its
  own). A tokenizer without a chat template is an input error naming the
  ``template`` option.

The model's answer is ``render_target(output)`` = ``" " + output``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tunelens.errors import TunelensInputError
from tunelens.tasks.types import Example, Task

TEMPLATES = ("tk", "plain", "chat")
_PLAIN_QUERY_END = "\nOutput:"


Template = Literal["tk", "plain", "chat"]


@dataclass(frozen=True)
class PromptStyle:
    """How a prompt is encoded; part of every cell's identity."""

    template: Template = "tk"
    definition: bool = True
    n_positive: int = 2  # task positive examples used when demos is None
    explanations: bool = False

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise TunelensInputError(
                f"unknown prompt template {self.template!r}; use one of {', '.join(TEMPLATES)}"
            )
        if self.n_positive < 0:
            raise TunelensInputError(f"n_positive must be >= 0, got {self.n_positive}")


def _definition_block(task: Task, style: PromptStyle) -> str:
    if style.definition and task.definition.strip():
        return f"Definition: {task.definition}\n\n"
    return ""


def _plain(task: Task, query: str, demos: Sequence[Example], style: PromptStyle) -> str:
    parts = [_definition_block(task, style)]
    parts += [f"Input: {d.input}\nOutput: {d.output}\n\n" for d in demos]
    parts.append(f"Input: {query}{_PLAIN_QUERY_END}")
    return "".join(parts)


def _tk(task: Task, query: str, demos: Sequence[Example], style: PromptStyle) -> str:
    parts = [_definition_block(task, style)]
    for i, d in enumerate(demos, start=1):
        parts.append(f"Positive Example {i} -\nInput: {d.input}\nOutput: {d.output}\n")
        if style.explanations and d.explanation:
            parts.append(f"Explanation: {d.explanation}\n")
        parts.append("\n")
    parts.append(f"Now complete the following example -\nInput: {query}\nOutput:")
    return "".join(parts)


def _chat(
    task: Task, query: str, demos: Sequence[Example], style: PromptStyle, tokenizer: Any
) -> str:
    if tokenizer is None:
        raise TunelensInputError(
            "the chat prompt template needs the model's tokenizer", where="template"
        )
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise TunelensInputError(
            f"the model's tokenizer ({name}) has no chat template, so the 'chat' prompt "
            "template cannot be used; choose --template plain or --template tk "
            "(spec key: template)",
            where="template",
        )
    content = _plain(task, query, demos, style)[: -len(_PLAIN_QUERY_END)]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    return _without_double_bos(str(text), tokenizer)


def _without_double_bos(text: str, tokenizer: Any) -> str:
    """``text`` without a leading BOS when the tokenizer adds one itself when encoding.

    Chat templates (Llama-2's, Mistral's) often start with ``{{ bos_token }}``;
    the tokenizer then adds another, and every state would be read after two.
    """
    bos = getattr(tokenizer, "bos_token", None)
    if not bos or not text.startswith(bos):
        return text
    bos_id = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("x")["input_ids"]
    return text[len(bos) :] if ids and ids[0] == bos_id else text


def render_prompt(
    task: Task,
    query: str,
    demos: Sequence[Example] | None = None,
    style: PromptStyle = PromptStyle(),
    tokenizer: Any = None,
) -> str:
    """The prompt for ``query``; ``demos`` None means the task's first ``n_positive`` examples.

    Pass ``demos=[]`` for a zero-shot prompt regardless of ``n_positive``.
    """
    if demos is None:
        demos = task.positive_examples[: style.n_positive]
    if style.template == "plain":
        return _plain(task, query, demos, style)
    if style.template == "tk":
        return _tk(task, query, demos, style)
    return _chat(task, query, demos, style, tokenizer)


def render_target(output: str) -> str:
    """The continuation the model must produce after the prompt: ``" " + output``."""
    return " " + output
