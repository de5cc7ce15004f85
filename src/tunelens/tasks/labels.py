"""A task's output label space: what the audit's guess, *simplified* and *delusive* need.

SuperNI does not mark classification tasks, and a subset of a task's instances
may not use every label (task190 keeps only "C" and "N" of its E / C / N), so
the space comes, in this order, from:

1. **the JSONL header's** ``labels`` (read by the JSONL loader; ``source="given"``);
2. **the labels the definition names** (``source="definition"``): SuperNI
   definitions state them, mostly quoted (``answer with "Contradiction",
   "Neutral", or "Entailment"``), sometimes bare (``the letters E, C, and N``).
   An output (of an instance or a positive example) is *named* when it equals a
   quoted span of the definition after ``normalize_answer`` (so ``"Yes"`` names
   the output ``Yes.``), or occurs in it as a whole word or phrase (case-blind;
   one-character labels must match case and not sit inside ``i.e.``). When every
   distinct instance output is named, the space is those outputs, the named
   positive-example outputs, and every quoted span listed together with one of
   them (``'positive', 'negative', or 'neutral'``: a run of quoted spans
   separated only by commas, "or", "and", "/"). Labels that no instance uses
   are kept and reported as ``unseen`` (task190's "E", task843's "negative",
   25 of task1394's 47 domains);
3. **the outputs of all instances in the file** (``source="instances"``), when
   they repeat: at least ``MIN_MEAN_REPEATS`` (2) instances per distinct output
   on average and at most ``MAX_LABELS`` (50) distinct outputs;
4. otherwise free text (``None``).

Whichever way it came, a label space is checked under the metric's own
normalisation (:func:`check_label_space`): exact match compares answers after
``normalize_answer`` (lower-case, punctuation dropped, spaces collapsed), so two
labels with one normalised text (``Yes`` and ``yes``, ``yes`` and ``yes.``) are
one answer to the metric. Where a user lists them, that is an input error (a
confusion matrix could not tell them apart, and a guess over "two" labels would
be scored as one); where they come from a task's outputs (rules 2 and 3), they
are one label, spelled as most outputs spell it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tunelens.errors import TunelensInputError
from tunelens.measures.text import normalize_answer

if TYPE_CHECKING:
    from tunelens.tasks.types import Task

MAX_LABELS = 50
MIN_MEAN_REPEATS = 2

LabelSource = Literal["given", "definition", "instances"]  # given: a JSONL header, a generator

_QUOTED = re.compile(
    r"""(?<!\w)'(?P<single>[^'\n]{1,80}?)'(?!\w)"""
    r'''|"(?P<double>[^"\n]{1,80}?)"'''
    r"|`(?P<back>[^`\n]{1,80}?)`"
    r"|\u201c(?P<curly>[^\u201d\n]{1,80}?)\u201d"
    r"|\u2018(?P<curly1>[^\u2019\n]{1,80}?)\u2019"
)
_LIST_SEPARATOR = re.compile(r"^\s*(,|/|,?\s*(or|and))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class LabelSpace:
    """A task's labels (sorted; None for free text), where they came from, and unused ones."""

    labels: tuple[str, ...] | None
    source: LabelSource | None
    unseen: tuple[str, ...] = ()


def check_label_space(
    labels: Iterable[str] | None, *, source: str, task: str, where: str | None = None
) -> None:
    """A :class:`TunelensInputError` naming the file, the task and both labels when two labels
    are the same text under exact match's normalisation; None passes (free text)."""
    seen: dict[str, str] = {}
    for label in labels or ():
        key = normalize_answer(label)
        if key in seen and seen[key] != label:
            raise TunelensInputError(
                f"task {task!r}: labels {seen[key]!r} and {label!r} are the same answer "
                f"({key!r}) under the exact-match normalisation (case, punctuation and "
                "spaces ignored), so no score can tell them apart; keep one of them",
                source=source,
                where=where,
            )
        seen.setdefault(key, label)


def quoted_spans(definition: str) -> list[tuple[int, int, str]]:
    """(start, end, text) of every quoted span of ``definition``, in order."""
    spans = []
    for match in _QUOTED.finditer(definition):
        text = next(g for g in match.groups() if g is not None).strip()
        if text:
            spans.append((match.start(), match.end(), text))
    return spans


def _named_in(label: str, definition: str) -> bool:
    """True if ``label`` occurs in ``definition`` as a whole word or phrase."""
    label = label.strip()
    if not label:
        return False
    pattern = r"(?<![\w.])" + re.escape(label) + r"(?!\w|\.\w)"
    flags = 0 if len(label) == 1 else re.IGNORECASE
    return re.search(pattern, definition, flags=flags) is not None


def _definition_space(
    distinct: set[str], example_outputs: Sequence[str], definition: str
) -> LabelSpace | None:
    spans = quoted_spans(definition)
    quoted = {normalize_answer(text) for _, _, text in spans}

    def named(output: str) -> bool:
        return normalize_answer(output) in quoted or _named_in(output, definition)

    if not distinct or not all(named(o) for o in distinct):
        return None
    labels = set(distinct) | {o for o in example_outputs if named(o)}
    known = {normalize_answer(label) for label in labels}
    # Runs of quoted spans separated only by list punctuation: a stated enumeration.
    runs: list[list[str]] = []
    for i, (start, _, text) in enumerate(spans):
        if i and _LIST_SEPARATOR.match(definition[spans[i - 1][1] : start]):
            runs[-1].append(text)
        else:
            runs.append([text])
    for run in runs:
        if any(normalize_answer(text) in known for text in run):
            for text in run:
                if normalize_answer(text) not in known:
                    labels.add(text)
                    known.add(normalize_answer(text))
    if len(labels) > MAX_LABELS:
        return None
    unseen = tuple(sorted(label for label in labels if label not in distinct))
    return LabelSpace(tuple(sorted(labels)), "definition", unseen)


def _spellings(texts: Iterable[str]) -> dict[str, str]:
    """Each output's one spelling: outputs that exact match reads as one answer (``Yes`` /
    ``yes`` / ``yes.``) map to the most frequent of them (ties: the first in sorted order).

    A label space derived from a task's outputs is the data's, not the user's: real
    Super-NaturalInstructions tasks spell one label several ways, and refusing them
    would stop an audit over the benchmark on its first such task. Labels a user
    lists (a JSONL header, decide's task file) are still refused by
    :func:`check_label_space`.
    """
    counts: dict[str, dict[str, int]] = {}
    for text in texts:
        spellings = counts.setdefault(normalize_answer(text), {})
        spellings[text] = spellings.get(text, 0) + 1
    return {
        text: min(spellings, key=lambda t: (-spellings[t], t))
        for spellings in counts.values()
        for text in spellings
    }


def label_space(
    outputs_per_instance: Iterable[Sequence[str]],
    *,
    definition: str = "",
    example_outputs: Sequence[str] = (),
    max_labels: int = MAX_LABELS,
) -> LabelSpace:
    """The label space by the module's rule (the header's labels are the loader's business)."""
    per_instance = [tuple(outputs) for outputs in outputs_per_instance]
    spelling = _spellings([o for outputs in per_instance for o in outputs] + list(example_outputs))
    per_instance = [tuple(dict.fromkeys(spelling[o] for o in outputs)) for outputs in per_instance]
    example_outputs = [spelling[o] for o in example_outputs]
    distinct = {output for outputs in per_instance for output in outputs}
    if not distinct or len(distinct) > max_labels:
        return LabelSpace(None, None)
    if definition:
        named = _definition_space(distinct, example_outputs, definition)
        if named is not None:
            return named
    if len(per_instance) >= MIN_MEAN_REPEATS * len(distinct):
        return LabelSpace(tuple(sorted(distinct)), "instances")
    return LabelSpace(None, None)


def derive_label_space(
    outputs_per_instance: Iterable[Sequence[str]],
    *,
    definition: str = "",
    example_outputs: Sequence[str] = (),
    max_labels: int = MAX_LABELS,
) -> tuple[str, ...] | None:
    """The sorted label space of a classification-like task, or ``None`` for free text."""
    return label_space(
        outputs_per_instance,
        definition=definition,
        example_outputs=example_outputs,
        max_labels=max_labels,
    ).labels


def describe_label_space(task: Task) -> LabelSpace:
    """Where ``task.labels`` came from and which of them no instance uses.

    The rule is re-applied to the task as loaded: labels it reproduces carry
    its source; others were given (a JSONL header, a generator).
    """
    derived = label_space(
        (i.outputs for i in task.instances),
        definition=task.definition,
        example_outputs=[e.output for e in task.positive_examples],
    )
    if task.labels is None or derived.labels == task.labels:
        return derived if task.labels is not None else LabelSpace(None, None)
    used = {o for i in task.instances for o in i.outputs}
    return LabelSpace(task.labels, "given", tuple(x for x in task.labels if x not in used))
