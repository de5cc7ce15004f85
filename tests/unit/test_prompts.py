"""Prompt templates are byte-exact contracts (the world model is trained on the plain one)."""

from __future__ import annotations

import pytest

from tunelens.errors import TunelensInputError
from tunelens.prompts import PromptStyle, render_prompt, render_target
from tunelens.tasks.types import Example, Instance, Task

TASK = Task(
    name="t",
    definition="Say yes or no.",
    instances=(Instance("t-0", "is it?", ("yes",)),),
    positive_examples=(
        Example("a", "yes", "because a"),
        Example("b", "no", ""),
        Example("c", "yes", "because c"),
    ),
    labels=("no", "yes"),
)


def test_tk_template_with_default_two_positive_examples():
    assert render_prompt(TASK, "q") == (
        "Definition: Say yes or no.\n\n"
        "Positive Example 1 -\nInput: a\nOutput: yes\n\n"
        "Positive Example 2 -\nInput: b\nOutput: no\n\n"
        "Now complete the following example -\nInput: q\nOutput:"
    )


def test_tk_template_with_explanations_skips_missing_ones():
    style = PromptStyle(template="tk", n_positive=3, explanations=True)
    assert render_prompt(TASK, "q", style=style) == (
        "Definition: Say yes or no.\n\n"
        "Positive Example 1 -\nInput: a\nOutput: yes\nExplanation: because a\n\n"
        "Positive Example 2 -\nInput: b\nOutput: no\n\n"
        "Positive Example 3 -\nInput: c\nOutput: yes\nExplanation: because c\n\n"
        "Now complete the following example -\nInput: q\nOutput:"
    )


def test_tk_template_zero_shot_without_definition():
    style = PromptStyle(template="tk", definition=False)
    assert render_prompt(TASK, "q", [], style) == (
        "Now complete the following example -\nInput: q\nOutput:"
    )


def test_plain_template_with_given_demos():
    demos = [Example("x1", "y1"), Example("x2", "y2")]
    style = PromptStyle(template="plain")
    assert render_prompt(TASK, "q", demos, style) == (
        "Definition: Say yes or no.\n\n"
        "Input: x1\nOutput: y1\n\n"
        "Input: x2\nOutput: y2\n\n"
        "Input: q\nOutput:"
    )


def test_plain_template_empty_definition_and_no_demos():
    style = PromptStyle(template="plain")
    empty = TASK.with_changes(definition="")
    assert render_prompt(empty, "q", [], style) == "Input: q\nOutput:"
    assert render_prompt(TASK, "q", [], PromptStyle(template="plain", definition=False)) == (
        "Input: q\nOutput:"
    )
    assert render_prompt(empty, "q", None, PromptStyle(template="plain", n_positive=1)) == (
        "Input: a\nOutput: yes\n\nInput: q\nOutput:"
    )


def test_render_target_is_a_leading_space():
    assert render_target("yes") == " yes"


class _FakeChatTokenizer:
    chat_template = "{{ messages }}"

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        self.calls.append((messages, tokenize, add_generation_prompt))
        return "<user>" + messages[0]["content"] + "</user><assistant>"


def test_chat_template_wraps_the_plain_text_without_output():
    tok = _FakeChatTokenizer()
    out = render_prompt(TASK, "q", [Example("x", "y")], PromptStyle(template="chat"), tok)
    content = "Definition: Say yes or no.\n\nInput: x\nOutput: y\n\nInput: q"
    assert out == f"<user>{content}</user><assistant>"
    assert tok.calls == [([{"role": "user", "content": content}], False, True)]


def test_chat_template_with_a_real_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    model = tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer(model))
    with pytest.raises(TunelensInputError, match="no chat template"):
        render_prompt(TASK, "q", [], PromptStyle(template="chat"), tok)
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    out = render_prompt(TASK, "q", [], PromptStyle(template="chat"), tok)
    assert out == "<|user|>Definition: Say yes or no.\n\nInput: q<|assistant|>"


def test_chat_without_tokenizer_and_bad_style_are_input_errors():
    with pytest.raises(TunelensInputError, match="tokenizer"):
        render_prompt(TASK, "q", [], PromptStyle(template="chat"))
    with pytest.raises(TunelensInputError, match="template"):
        PromptStyle(template="xml")  # type: ignore[arg-type]
    with pytest.raises(TunelensInputError, match="n_positive"):
        PromptStyle(n_positive=-1)


def test_chat_template_drops_a_bos_the_tokenizer_adds_again():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"[UNK]": 0, "<s>": 1, "q": 2}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    template = "{{ bos_token }}{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    plain = transformers.PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>")
    plain.chat_template = template
    style = PromptStyle(template="chat", definition=False)
    # this tokenizer adds no BOS itself: the template's stays
    assert render_prompt(TASK, "q", [], style, plain) == "<s>[Input: q]"
    core.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    adding = transformers.PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>")
    adding.chat_template = template
    assert render_prompt(TASK, "q", [], style, adding) == "[Input: q]"
