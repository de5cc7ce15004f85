"""Variants keep their defining properties: output space only, wrong mappings, exact flips."""

from __future__ import annotations

import random
import re

import pytest

from tunelens.errors import TunelensInputError
from tunelens.tasks.types import Example, Instance, Task
from tunelens.tasks.variants import (
    apply_definition_variant,
    apply_examples_variant,
    delusive_examples,
    empty_definition,
    flip_labels,
    irrelevant_examples,
    no_examples,
    output_space,
    output_space_sentence,
    shuffle_demo_tokens,
    simplified_definition,
)

# SuperNI task1531_daily_dialog_type_classification, verbatim.
DAILY_DIALOG_DEFINITION = (
    "You have to predict the type of conversation sentence given as input. Your predictions can "
    "be one among: 'information' if the input statement states a piece of information, "
    "'question' if the input statement asks for some information, 'directive' if the input "
    "sentence involves the management or guidance of operations, and 'commissive' when it "
    "constitutes a statement that commits the speaker to some future action."
)
LABELS = ("commissive", "directive", "information", "question")
STOP = {
    "the",
    "a",
    "an",
    "of",
    "to",
    "if",
    "it",
    "or",
    "and",
    "be",
    "can",
    "for",
    "some",
    "when",
    "that",
    "have",
    "one",
    "as",
    "your",
    "you",
    "is",
    "among",
}


def make_task(name: str = "task1531", labels=LABELS, n: int = 12) -> Task:
    outputs = list(labels) if labels else [f"free text {i}" for i in range(n)]
    instances = tuple(
        Instance(f"{name}-{i}", f"{name} input {i}", (outputs[i % len(outputs)],)) for i in range(n)
    )
    examples = tuple(
        Example(f"{name} demo {i}", outputs[i % len(outputs)], f"why {i}") for i in range(8)
    )
    return Task(
        name,
        DAILY_DIALOG_DEFINITION,
        instances,
        examples,
        (Example("neg", outputs[0], "bad"),),
        ("Dialogue Act Recognition",),
        labels=tuple(labels) if labels else None,
    )


def words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def test_simplified_definition_states_only_the_output_space():
    task = make_task()
    simple = simplified_definition(task)
    assert simple.definition == 'Answer "commissive", "directive", "information" or "question".'
    for label in LABELS:
        assert f'"{label}"' in simple.definition
    content = words(DAILY_DIALOG_DEFINITION) - STOP - set(LABELS)
    assert not content & (words(simple.definition) - {"answer", "or"})
    assert "answer" not in words(DAILY_DIALOG_DEFINITION)
    assert simple.instances == task.instances and simple.positive_examples == task.positive_examples
    assert task.definition == DAILY_DIALOG_DEFINITION  # the input is untouched


def test_output_space_sentences():
    assert output_space_sentence(("no", "yes")) == 'Answer "no" or "yes".'
    assert output_space_sentence(("only",)) == 'Answer "only".'
    assert output_space_sentence(('say "hi"',)) == 'Answer "say \\"hi\\"".'
    assert output_space_sentence(None) == "Answer with a short text."
    assert simplified_definition(make_task(labels=None)).definition == "Answer with a short text."


def test_empty_definition_and_no_examples():
    task = make_task()
    assert empty_definition(task).definition == ""
    bare = no_examples(task)
    assert bare.positive_examples == () and bare.negative_examples == ()
    assert bare.instances == task.instances


@pytest.mark.parametrize("labels", [("no", "yes"), LABELS])
def test_delusive_examples_never_keep_the_true_output(labels):
    examples = make_task(labels=labels).positive_examples
    for seed in range(200):
        wrong = delusive_examples(examples, labels, seed)
        assert [e.input for e in wrong] == [e.input for e in examples]
        for old, new in zip(examples, wrong, strict=True):
            assert new.output != old.output and new.output in labels
        assert wrong == delusive_examples(examples, labels, seed)  # determinism per seed
    assert len({tuple(delusive_examples(examples, labels, s)) for s in range(20)}) > 1 or (
        len(labels) == 2
    )


def test_delusive_single_label_space_cannot_change():
    examples = [Example("x", "only")]
    assert delusive_examples(examples, ("only",), 0)[0].output == "only"


def test_delusive_free_text_takes_another_examples_output():
    examples = [
        Example("x1", "alpha"),
        Example("x2", "beta"),
        Example("x3", "alpha"),
        Example("x4", "gamma"),
    ]
    outputs = {e.output for e in examples}
    for seed in range(100):
        wrong = delusive_examples(examples, None, random.Random(seed))
        for old, new in zip(examples, wrong, strict=True):
            assert new.output != old.output and new.output in outputs
    same = [Example("x1", "same"), Example("x2", "same")]
    assert [e.output for e in delusive_examples(same, None, 0)] == ["same", "same"]


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.6, 1.0])
def test_flip_labels_flips_exactly_the_rounded_fraction(fraction):
    examples = list(make_task().positive_examples)
    for seed in range(50):
        flipped = flip_labels(examples, LABELS, fraction, seed)
        changed = sum(a.output != b.output for a, b in zip(examples, flipped, strict=True))
        assert changed == round(fraction * len(examples))
        assert all(e.output in LABELS for e in flipped)
        assert [e.input for e in flipped] == [e.input for e in examples]
        assert flipped == flip_labels(examples, LABELS, fraction, seed)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("fraction", [0.25, 0.5, 1.0])
def test_flip_labels_gives_each_flipped_demo_another_label_of_the_space(k, fraction):
    examples = list(make_task().positive_examples)[:k]
    for seed in range(30):
        flipped = flip_labels(examples, LABELS, fraction, random.Random(seed))
        changed = [(a, b) for a, b in zip(examples, flipped, strict=True) if a != b]
        assert len(changed) == round(fraction * k)
        for old, new in changed:
            assert new.input == old.input and new.output != old.output and new.output in LABELS


def test_flip_labels_without_a_label_space_uses_the_distinct_outputs():
    task = make_task(labels=None)
    space = output_space(task)
    assert space == sorted({i.outputs[0] for i in task.instances})
    demos = [Example(i.input, i.outputs[0]) for i in task.instances[:6]]
    for seed in range(20):
        flipped = flip_labels(demos, space, 0.5, seed)
        changed = [(a, b) for a, b in zip(demos, flipped, strict=True) if a != b]
        assert len(changed) == 3
        assert all(new.output in space and new.output != old.output for old, new in changed)
        # No space passed: the demonstrations' own distinct outputs.
        own = {d.output for d in demos}
        assert all(e.output in own for e in flip_labels(demos, None, 1.0, seed))
    assert output_space(make_task()) == list(LABELS)


def test_flip_labels_errors():
    examples = list(make_task().positive_examples)
    with pytest.raises(TunelensInputError, match="between 0 and 1"):
        flip_labels(examples, LABELS, 1.5, 0)
    single = [Example(f"x{i}", "same") for i in range(4)]
    with pytest.raises(TunelensInputError, match="at least two possible labels"):
        flip_labels(single, None, 0.5, 0)
    with pytest.raises(TunelensInputError, match="at least two possible labels"):
        flip_labels(examples, ("only",), 0.5, 0)
    assert flip_labels(single, None, 0.0, 0) == single  # flipping none always works
    assert flip_labels(examples, LABELS, 0.05, 0) == examples  # round(0.05 * 8) == 0


def test_shuffled_tokens_keep_the_words_and_the_lengths():
    demos = [
        Example("the cat sat", "yes", "why"),
        Example("a dog", "no"),
        Example("one two three four", "maybe not"),
    ]

    def all_words(examples):
        return sorted(w for e in examples for w in (e.input + " " + e.output).split())

    outcomes = set()
    for seed in range(30):
        shuffled = shuffle_demo_tokens(demos, seed)
        assert all_words(shuffled) == all_words(demos)
        for old, new in zip(demos, shuffled, strict=True):
            assert len(new.input.split()) == len(old.input.split())
            assert len(new.output.split()) == len(old.output.split())
            assert new.explanation == ""
        assert shuffled == shuffle_demo_tokens(demos, seed)
        outcomes.add(tuple(shuffled))
    assert len(outcomes) > 1


def test_irrelevant_examples_come_from_the_other_task():
    task, other = make_task("mine"), make_task("other", labels=("no", "yes"))
    demos = irrelevant_examples(task, other, 5, seed=3)
    pool = set(other.positive_examples) | {Example(i.input, i.outputs[0]) for i in other.instances}
    assert len(demos) == 5 and len(set(demos)) == 5 and set(demos) <= pool
    assert demos == irrelevant_examples(task, other, 5, seed=3)
    with pytest.raises(TunelensInputError, match="another task"):
        irrelevant_examples(task, task, 1, 0)
    with pytest.raises(TunelensInputError, match="usable examples"):
        irrelevant_examples(task, other, 1000, 0)


def test_irrelevant_examples_are_nested_and_never_share_an_input_with_the_task():
    task = make_task("mine")
    overlap = tuple(Instance(f"o{i}", f"mine input {i}", ("yes",)) for i in range(6))
    other = make_task("other", labels=("no", "yes"))
    other = other.with_changes(instances=overlap + other.instances)
    own_inputs = {i.input for i in task.instances} | {e.input for e in task.positive_examples}
    for seed in range(20):
        everything = irrelevant_examples(task, other, None, seed)
        assert not own_inputs & {e.input for e in everything}
        assert len(everything) == len(other.positive_examples) + len(other.instances) - 6
        for n in (0, 1, 4, 9):
            assert irrelevant_examples(task, other, n, seed) == everything[:n]


def test_grid_variant_names():
    task = make_task()
    assert apply_definition_variant(task, "original") == task
    assert apply_definition_variant(task, "simplified") == simplified_definition(task)
    assert apply_definition_variant(task, "none").definition == ""
    assert apply_examples_variant(task, "original", seed=1) == task
    assert apply_examples_variant(task, "none", seed=1).positive_examples == ()
    delusive = apply_examples_variant(task, "delusive", seed=1)
    assert delusive == apply_examples_variant(task, "delusive", seed=1)
    assert all(
        a.output != b.output
        for a, b in zip(task.positive_examples, delusive.positive_examples, strict=True)
    )
    with pytest.raises(TunelensInputError, match="definition variant"):
        apply_definition_variant(task, "short")
    with pytest.raises(TunelensInputError, match="examples variant"):
        apply_examples_variant(task, "wrong", seed=0)
