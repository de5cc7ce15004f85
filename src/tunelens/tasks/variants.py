"""Manipulations of definitions and demonstrations that separate task learning from format.

After Kung & Peng (2023): a *simplified* definition keeps only the output space,
*delusive* examples keep the input and output spaces but break the mapping. If
a model tuned on these does as well as one tuned on the originals, tuning
taught the format, not the task. Flipped and irrelevant demonstrations play the
same role for in-context learning, and demonstrations with shuffled tokens are
convergence's control for "any text of the same words and lengths".

Each manipulation has exactly one implementation here: :func:`delusive_examples`,
:func:`flip_labels`, :func:`irrelevant_examples`, :func:`shuffle_demo_tokens`.
Which demonstrations are manipulated is drawn by ``tunelens.tasks.sampling``.

Every function is pure: it returns new tasks (``Task.with_changes``) or new
example lists and takes its randomness from ``seed`` (an int, a string, or a
``random.Random``), so a cell's inputs are reproducible and cacheable.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

from tunelens.errors import TunelensInputError
from tunelens.tasks.types import Example, Task

DEFINITION_VARIANTS = ("original", "simplified", "none")
EXAMPLES_VARIANTS = ("original", "delusive", "none")
FREE_TEXT_DEFINITION = "Answer with a short text."

Seed = int | str | random.Random


def _rng(seed: Seed) -> random.Random:
    """A private generator: a passed ``Random`` is used as is (the caller owns its state)."""
    return seed if isinstance(seed, random.Random) else random.Random(seed)


def _quote(label: str) -> str:
    return json.dumps(label, ensure_ascii=False)


def output_space_sentence(labels: Sequence[str] | None) -> str:
    """A one-sentence definition stating only the output space.

    ``Answer "no" or "yes".``; ``Answer "a", "b" or "c".``; free text (``None``):
    ``Answer with a short text.``
    """
    if not labels:
        return FREE_TEXT_DEFINITION
    quoted = [_quote(label) for label in labels]
    if len(quoted) == 1:
        return f"Answer {quoted[0]}."
    return f"Answer {', '.join(quoted[:-1])} or {quoted[-1]}."


def simplified_definition(task: Task) -> Task:
    """The task with a definition that states only its output space, nothing of the task."""
    return task.with_changes(definition=output_space_sentence(task.labels))


def empty_definition(task: Task) -> Task:
    """The task without a definition (prompts then have no Definition line)."""
    return task.with_changes(definition="")


def no_examples(task: Task) -> Task:
    """The task without demonstrations (positive and negative)."""
    return task.with_changes(positive_examples=(), negative_examples=())


def _wrong_output(
    example: Example,
    index: int,
    examples: Sequence[Example],
    labels: Sequence[str] | None,
    rng: random.Random,
) -> str:
    """A different output for ``example``: another label, or another example's output."""
    if labels:
        wrong = [label for label in labels if label != example.output]
        return rng.choice(wrong) if wrong else example.output
    others = [e.output for j, e in enumerate(examples) if j != index]
    different = [o for o in others if o != example.output]
    pool = different or others
    return rng.choice(pool) if pool else example.output


def delusive_examples(
    examples: Sequence[Example], labels: Sequence[str] | None, seed: Seed
) -> list[Example]:
    """Every example with a wrong output from the same output space.

    With a label space, each output becomes a *different* label (unchanged only
    if the space has no other label). Free text (``labels`` None): each output
    becomes another example's output, a different string where one exists.
    Explanations are dropped, since they would explain the true mapping.
    """
    rng = _rng(seed)
    return [
        Example(e.input, _wrong_output(e, i, examples, labels, rng)) for i, e in enumerate(examples)
    ]


def output_space(task: Task) -> list[str]:
    """The task's label space, or for free text every distinct reference output of its instances."""
    if task.labels:
        return list(task.labels)
    return sorted({inst.outputs[0] for inst in task.instances})


def flip_labels(
    examples: Sequence[Example], labels: Sequence[str] | None, fraction: float, seed: Seed
) -> list[Example]:
    """Exactly ``round(fraction * n)`` examples get a different label of the space.

    The flipped examples are chosen at random; each gets a label of ``labels``
    other than its own (its explanation is dropped). Pass the task's space
    (:func:`output_space`: its labels, or for free text its distinct outputs);
    ``labels`` None uses the distinct outputs of ``examples``. A space of fewer
    than two labels cannot flip anything and raises ``TunelensInputError``
    (never a silent no-op); flipping none (``round(fraction * n) == 0``) always works.
    """
    if not 0.0 <= fraction <= 1.0:
        raise TunelensInputError(f"flip fraction must be between 0 and 1, got {fraction}")
    examples = list(examples)
    n_flip = round(fraction * len(examples))
    if n_flip == 0:
        return examples
    space = sorted(set(labels)) if labels else sorted({e.output for e in examples})
    if len(space) < 2:
        raise TunelensInputError(
            f"flipping labels needs at least two possible labels; this task has {len(space)} "
            f"({', '.join(_quote(label) for label in space) or 'none'})"
        )
    rng = _rng(seed)
    for i in sorted(rng.sample(range(len(examples)), n_flip)):
        wrong = [label for label in space if label != examples[i].output]
        examples[i] = Example(examples[i].input, rng.choice(wrong))
    return examples


def irrelevant_examples(
    task: Task,
    other_task: Task,
    n: int | None,
    seed: Seed,
    *,
    positive_examples: bool = True,
) -> list[Example]:
    """``n`` demonstrations drawn from ``other_task`` (its positive examples and instances).

    The control for "does the model use what the demonstrations say about *this*
    task?". The pool excludes any example whose input is also an input of ``task``
    (so never an anchor's input). The draw is one random permutation of the pool
    of which the first ``n`` are returned (``None``: all of it), so for one seed
    the draws are nested: the draw of n is a prefix of the draw of any larger n.
    ``positive_examples=False`` draws from the other task's instances only (as
    convergence's same-task demonstrations are).
    """
    if other_task.name == task.name:
        raise TunelensInputError(
            f"irrelevant examples must come from another task than {task.name!r}"
        )
    own_inputs = {e.input for e in task.positive_examples} | {i.input for i in task.instances}
    shown = other_task.positive_examples if positive_examples else ()
    pool = [e for e in shown if e.input not in own_inputs]
    pool += [
        Example(i.input, i.outputs[0]) for i in other_task.instances if i.input not in own_inputs
    ]
    if n is not None and n > len(pool):
        raise TunelensInputError(
            f"task {other_task.name!r} has {len(pool)} usable examples, {n} were asked for"
        )
    return _rng(seed).sample(pool, len(pool))[:n]


def shuffle_demo_tokens(examples: Sequence[Example], seed: Seed) -> list[Example]:
    """Pool the words of all demonstrations and deal them back at random.

    Every input and output keeps its number of (whitespace-separated) words and
    the multiset of all words is unchanged; explanations are dropped.
    """
    pieces = [(e.input.split(), e.output.split()) for e in examples]
    words = [w for inp, out in pieces for w in inp + out]
    _rng(seed).shuffle(words)
    dealt, pos = [], 0
    for inp, out in pieces:
        new_in = words[pos : pos + len(inp)]
        pos += len(inp)
        new_out = words[pos : pos + len(out)]
        pos += len(out)
        dealt.append(Example(" ".join(new_in), " ".join(new_out)))
    return dealt


def _task_rng(task: Task, seed: Seed) -> random.Random:
    """Per-task randomness from one seed, so tasks in a grid get independent draws."""
    if isinstance(seed, random.Random):
        return seed
    return random.Random(f"{seed}|{task.name}")


def apply_definition_variant(task: Task, name: str) -> Task:
    """The audit grid's definition axis: ``original``, ``simplified`` or ``none``."""
    if name == "original":
        return task
    if name == "simplified":
        return simplified_definition(task)
    if name == "none":
        return empty_definition(task)
    raise TunelensInputError(
        f"unknown definition variant {name!r}; use one of {', '.join(DEFINITION_VARIANTS)}"
    )


def apply_examples_variant(task: Task, name: str, seed: Seed = 0) -> Task:
    """The audit grid's examples axis: ``original``, ``delusive`` or ``none``."""
    if name == "original":
        return task
    if name == "delusive":
        wrong = delusive_examples(task.positive_examples, task.labels, _task_rng(task, seed))
        return task.with_changes(positive_examples=tuple(wrong))
    if name == "none":
        return no_examples(task)
    raise TunelensInputError(
        f"unknown examples variant {name!r}; use one of {', '.join(EXAMPLES_VARIANTS)}"
    )
