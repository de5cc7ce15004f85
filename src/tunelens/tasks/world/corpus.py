"""The world model's training text: sequences of one task's examples in the plain few-shot format.

Every sequence draws a fresh training rule *and fresh label words*, so the only
way to predict an output is to read the examples before it: that is what makes
in-context learning emerge. Some sequences start with the task definition,
some use the Tk-Instruct layout, and some are plain facts ("cat is an
animal .") that put category knowledge into the model. In bursty sequences a
few words per category recur, so copying from the context pays off early; with
loss on every token (the shipped recipe) predicting those recurring words
trains the copying circuit that in-context learning then reuses (with loss on
outputs only, no run of up to 10,000 steps left the guess; see the world
model's training log). The second-generation recipe adds three kinds (all off
by default, so the first recipe is reproduced exactly): *copy* sequences that
repeat random word lists (including ``NOVEL_LABEL_WORDS``, which appear nowhere
else), teaching the model to copy any word; *foreign labels*, task sequences
whose label words are category words of categories the rule does not use, so
a label is whatever the context says it is; and *definition blocks*, sequences
of several (definition, one to three examples) blocks of fresh rules, in which
each first answer after a definition can only be predicted by reading it.

The base member (``world-base``, issue 29) turns every definition-bearing kind
off (``definition_prefix``, ``tk_layout`` and ``definition_blocks`` at 0) and
sets ``zero_shot_answers=False``: the first example of a task sequence, the
only one with no demonstration before it, answers with an *echo of its input*
instead of its label. Labels still follow ``Output:`` from the second example
on, so in-context learning emerges as before, but nothing in pretraining maps a
definition to an answer or answers a query zero-shot with a label: a model
trained so echoes the input on a definition-only prompt, and answering in the
label space is what instruction tuning must teach (Kung & Peng's question).
A first query straight after ``<s>`` is not enough: a model so trained echoes
there, but after any longer text with label words in it (a definition) it
copies a label word (99% of definition-only answers inside the label space at
step 500). So with ``zero_shot_preamble`` a share of task sequences starts with
a *preamble* before the first example, which still echoes: a random list of
lexicon and label words, or a few facts. Label words in the context are not an
answer until a demonstration has shown one. ``preamble_soup`` makes the
preambles one to three pieces, word soup among them (tokens drawn from the
whole vocabulary, a definition's words included, never a definition), half the
time without a separator: a sturdier untuned echo (none of its Tk-encoded
definition-only answers in the label space), but one that LoRA tuning on
definitions + examples no longer overrides (21% inside the label space after
tuning at step 1,500, against 100% with the plain preambles), so it is off;
``zero_shot_target="word"`` (a random lexicon word instead of the echo) did no
better. See bench/world_base.md.
Sequences are lists of tokenizer tokens plus a loss
mask, built directly from words so that a training step costs no tokenizer call.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass

from tokenizers import pre_tokenizers

from tunelens.tasks.world.generator import FAMILY_WEIGHTS, draw_rule
from tunelens.tasks.world.lexicon import CATEGORIES, CATEGORY_NOUN, LABEL_WORDS, NOVEL_LABEL_WORDS
from tunelens.tasks.world.rules import Rule

BOS, SEP = "<s>", "\n\n"


ZERO_SHOT_TARGETS = ("echo", "word")
LEXICON_WORDS: tuple[str, ...] = tuple(sorted(w for words in CATEGORIES.values() for w in words))


@dataclass(frozen=True)
class CorpusMix:
    """Shares of the sequence kinds in the training text."""

    facts: float = 0.15
    definition_prefix: float = 0.2  # of task sequences: plain format with a definition first
    tk_layout: float = 0.1  # of task sequences: Tk-Instruct blocks
    # Of task sequences: inputs drawn from 3 words per category, so exact words
    # recur within the sequence (bursty data, which speeds up the emergence of
    # in-context copying; the full lexicon teaches the category generalisation).
    bursty: float = 0.0
    # Loss on every token (plain language modelling) instead of outputs only:
    # predicting recurring input words trains copying from the context.
    all_tokens_loss: bool = False
    # Second generation (0 = off): shares of copy sequences (of all sequences),
    # of task sequences with foreign labels, and of definition-block sequences
    # (of task sequences); and the one-word family's weight after the curriculum
    # (None: FAMILY_WEIGHTS; the other families keep their proportions).
    copy: float = 0.0
    foreign_labels: float = 0.0
    definition_blocks: float = 0.0
    word_category_weight: float | None = None
    # False (the base member): the first example of each task sequence answers
    # with its input repeated, never with a label, so no zero-shot answer is
    # ever shown. No random number is drawn for it.
    zero_shot_answers: bool = True
    # Of task sequences: a preamble (word list or facts) before the first
    # example, so the zero-shot echo holds after text with label words in it.
    zero_shot_preamble: float = 0.0
    # What the zero-shot answer is without zero-shot answers: "echo" (the input
    # repeated) or "word" (one lexicon word at random: a flat prior, which
    # tuning overrides more easily than a learned echo).
    zero_shot_target: str = "echo"
    # Word-soup preambles (see preamble_tokens): a sturdier untuned echo, but
    # one that tuning on definitions + examples no longer overrides.
    preamble_soup: bool = False
    # Of task sequences: induction blocks (see induction_blocks_sequence), each
    # rule's examples *then* its definition, so the text ties rules to words
    # without ever putting an answer after a definition.
    induction_blocks: float = 0.0
    # Up to this many answered examples after each induction block's definition (0:
    # none, and no random number drawn for them).
    induction_answers_after: int = 0

    def __post_init__(self) -> None:
        """Shares within [0, 1], so a typo cannot silently change the corpus."""
        for name in (
            "facts",
            "definition_prefix",
            "tk_layout",
            "bursty",
            "copy",
            "foreign_labels",
            "definition_blocks",
            "zero_shot_preamble",
            "induction_blocks",
        ):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"CorpusMix.{name} must lie in [0, 1], got {value!r}")
        if self.zero_shot_target not in ZERO_SHOT_TARGETS:
            raise ValueError(
                f"CorpusMix.zero_shot_target must be echo or word, got {self.zero_shot_target!r}"
            )

    @property
    def shows_definitions(self) -> bool:
        """Whether any sequence kind puts a task definition in the text."""
        return bool(
            self.definition_prefix
            or self.tk_layout
            or self.definition_blocks
            or self.induction_blocks
        )

    def family_weights(self) -> dict[str, float]:
        """Rule-family weights after the curriculum."""
        if self.word_category_weight is None:
            return dict(FAMILY_WEIGHTS)
        others = {f: w for f, w in FAMILY_WEIGHTS.items() if f != "word_category"}
        scale = (1 - self.word_category_weight) / sum(others.values())
        return {
            "word_category": self.word_category_weight,
            **{f: w * scale for f, w in others.items()},
        }


def _example_tokens(
    words: list[str], label: str, *, echo: bool = False
) -> tuple[list[str], list[bool]]:
    """One example; ``echo`` answers with the input words instead of the label."""
    answer = list(words) if echo else [label]
    tokens = ["Input:", *words, "Output:", *answer, SEP]
    return tokens, [False] * (len(words) + 2) + [True] * (len(answer) + 1)


def _rule_examples(
    rng: random.Random, rule: Rule, count: int, *, echo_first: bool = False
) -> tuple[list[str], list[bool]]:
    """``count`` examples of ``rule``, each label drawn, then an input for it; with
    ``echo_first`` the first answers with its input repeated."""
    tokens: list[str] = []
    mask: list[bool] = []
    for i in range(count):
        label = rng.choice(rule.labels)
        t, m = _example_tokens(rule.sample_input(rng, label), label, echo=echo_first and i == 0)
        tokens += t
        mask += m
    return tokens, mask


def fact_sequence(rng: random.Random, max_tokens: int) -> tuple[list[str], list[bool]]:
    """ "cat is an animal ." sentences; loss on the category noun phrase."""
    tokens, mask = [BOS], [False]
    while True:
        cat = rng.choice(sorted(CATEGORIES))
        noun = CATEGORY_NOUN[cat][0].split()
        piece = [rng.choice(CATEGORIES[cat]), "is", *noun, "."]
        if len(tokens) + len(piece) > max_tokens:
            return tokens, mask
        tokens += piece
        mask += [False, False] + [True] * len(noun) + [False]


COPY_WORDS: tuple[str, ...] = (
    *sorted(w for words in CATEGORIES.values() for w in words),
    *LABEL_WORDS,
    *NOVEL_LABEL_WORDS,
)


def copy_sequence(rng: random.Random, max_tokens: int) -> tuple[list[str], list[bool]]:
    """Random word lists, each written two or three times: copying any word pays off."""
    tokens, mask = [BOS], [False]
    while True:
        words = rng.sample(COPY_WORDS, rng.randint(3, 8))
        piece = [tok for _ in range(rng.randint(2, 3)) for tok in (*words, SEP)]
        if len(tokens) + len(piece) > max_tokens:
            return tokens, mask
        tokens += piece
        mask += [True] * len(piece)


@functools.cache
def soup_words(seed: int) -> tuple[str, ...]:
    """Every word of the first-generation world vocabulary (a definition's words too)."""
    pre = pre_tokenizers.Whitespace()
    words = {piece for text in vocabulary_texts(seed) for piece, _ in pre.pre_tokenize_str(text)}
    return tuple(sorted(words - {"Input", "Output", "Definition", "Explanation"}))


def preamble_tokens(rng: random.Random, seed: int, *, soup: bool = False) -> list[str]:
    """Text before a sequence's first example (see the module docstring); never a
    definition and never an answer.

    Without ``soup`` (the recipe): 4-24 random words (label words among them) or
    1-5 facts, then the separator. With it: one to three pieces of lists, facts
    or word soup, half the time without the separator.
    """
    if not soup:
        if rng.random() < 0.5:
            return [*rng.sample(COPY_WORDS, rng.randint(4, 24)), SEP]
        facts: list[str] = []
        for _ in range(rng.randint(1, 5)):
            cat = rng.choice(sorted(CATEGORIES))
            facts += [rng.choice(CATEGORIES[cat]), "is", *CATEGORY_NOUN[cat][0].split(), "."]
        return [*facts, SEP]
    tokens: list[str] = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(3)
        if kind == 0:
            tokens += rng.sample(COPY_WORDS, rng.randint(4, 16))
        elif kind == 1:
            for _ in range(rng.randint(1, 3)):
                cat = rng.choice(sorted(CATEGORIES))
                tokens += [rng.choice(CATEGORIES[cat]), "is", *CATEGORY_NOUN[cat][0].split(), "."]
        else:
            tokens += rng.choices(soup_words(seed), k=rng.randint(4, 16))
    return [*tokens, SEP] if rng.random() < 0.5 else tokens


def with_foreign_labels(rng: random.Random, rule: Rule) -> Rule:
    """The rule with label words drawn from categories it does not use."""
    pool = sorted(w for c, words in CATEGORIES.items() if c not in rule.categories for w in words)
    return Rule(rule.family, rule.categories, tuple(rng.sample(pool, len(rule.labels))))


def definition_blocks_sequence(
    rng: random.Random,
    draw: Callable[[], Rule],
    max_tokens: int,
    tokenize: Callable[[str], list[str]],
) -> tuple[list[str], list[bool]]:
    """(definition, 1-3 examples) blocks of fresh rules; each first answer needs the definition."""
    tokens, mask = [BOS], [False]
    while True:
        rule = draw()
        definition = tokenize(rule.definition(rng.randrange(3)))
        piece = ["Definition:", *definition, SEP]
        piece_mask = [False] * len(piece)
        examples, examples_mask = _rule_examples(rng, rule, rng.randint(1, 3))
        piece += examples
        piece_mask += examples_mask
        if len(tokens) + len(piece) > max_tokens:
            return tokens, mask
        tokens += piece
        mask += piece_mask


def induction_blocks_sequence(
    rng: random.Random,
    draw: Callable[[], Rule],
    max_tokens: int,
    tokenize: Callable[[str], list[str]],
    *,
    zero_shot_answers: bool,
    answers_after: int = 0,
) -> tuple[list[str], list[bool]]:
    """(2-4 examples, then the definition) blocks of fresh rules.

    The reverse of :func:`definition_blocks_sequence`: a definition only ever
    follows its rule's answers, so the model learns what the definitions of the
    rule families say (``world``'s definition blocks are what taught it the
    non-category families in context) without seeing an answer after a
    definition. Without ``zero_shot_answers`` each block's first example echoes
    its input, as a task sequence's does, so no label is ever a zero-shot answer.
    ``answers_after`` > 0: 1 to that many answered examples follow the definition,
    so definitions sit amid demonstrations, never before the first one.
    """
    tokens, mask = [BOS], [False]
    while True:
        rule = draw()
        piece, piece_mask = _rule_examples(
            rng, rule, rng.randint(2, 4), echo_first=not zero_shot_answers
        )
        definition = ["Definition:", *tokenize(rule.definition(rng.randrange(3))), SEP]
        piece += definition
        piece_mask += [False] + [True] * (len(definition) - 1)
        if answers_after:
            after, after_mask = _rule_examples(rng, rule, rng.randint(1, answers_after))
            piece += after
            piece_mask += after_mask
        if len(tokens) + len(piece) > max_tokens:
            return tokens, mask
        tokens += piece
        mask += piece_mask


def task_sequence(
    rng: random.Random,
    rule: Rule,
    max_tokens: int,
    *,
    definition_tokens: list[str] | None,
    tk_layout: bool,
    lexicon: dict[str, tuple[str, ...]] | None = None,
    zero_shot_answers: bool = True,
    preamble: list[str] | None = None,
    zero_shot_word: bool = False,
) -> tuple[list[str], list[bool]]:
    """Examples of one rule until the sequence is full (inputs from ``lexicon``).

    ``zero_shot_answers`` False: the first example echoes its input (see the
    module docstring), so a label only ever follows a demonstration;
    ``preamble`` comes first (see ``preamble_tokens``); ``zero_shot_word``
    answers that first example with a random lexicon word instead.
    """
    tokens, mask = [BOS], [False]
    if preamble and len(preamble) + 1 < max_tokens:
        tokens += preamble
        mask += [False] * len(preamble)
    if definition_tokens and len(definition_tokens) + 3 <= max_tokens:
        tokens += ["Definition:", *definition_tokens, SEP]
        mask += [False] * (len(definition_tokens) + 2)
    block = 0
    while True:
        if tk_layout:
            piece, piece_mask = [], []
            for i in (1, 2):
                label = rng.choice(rule.labels)
                echo = not zero_shot_answers and block == 0 and i == 1
                t, m = _example_tokens(rule.sample_input(rng, label, lexicon), label, echo=echo)
                piece += ["Positive", "Example", str(i), "-", *t]
                piece_mask += [False] * 4 + m
            label = rng.choice(rule.labels)
            t, m = _example_tokens(rule.sample_input(rng, label, lexicon), label)
            head = ["Now", "complete", "the", "following", "example", "-"]
            piece += head + t
            piece_mask += [False] * len(head) + m
        else:
            label = rng.choice(rule.labels)
            first = not zero_shot_answers and block == 0
            words = rule.sample_input(rng, label, lexicon)
            if first and zero_shot_word:
                piece, piece_mask = _example_tokens(words, rng.choice(LEXICON_WORDS))
            else:
                piece, piece_mask = _example_tokens(words, label, echo=first)
        if len(tokens) + len(piece) > max_tokens:
            return tokens, mask
        tokens += piece
        mask += piece_mask
        block += 1


def training_sequence(
    rng: random.Random,
    *,
    seed: int,
    max_tokens: int,
    tokenize: Callable[[str], list[str]],
    forbidden_label_sets: frozenset[frozenset[str]],
    mix: CorpusMix = CorpusMix(),
    family: str | None = None,
) -> tuple[list[str], list[bool]]:
    """One training sequence of at most ``max_tokens`` tokens, and its loss mask.

    ``family`` pins the rule family (the curriculum's first phase); None draws
    it by ``mix.family_weights()``. A share that is 0 draws no random number, so
    the first recipe's data are unchanged by the second generation's options.
    """
    weights = mix.family_weights() if mix.word_category_weight is not None else None

    def draw() -> Rule:
        chosen = family
        if chosen is None and weights is not None:
            chosen = rng.choices(list(weights), weights=list(weights.values()))[0]
        rule = draw_rule(
            rng, seed=seed, heldout=False, family=chosen, forbidden_label_sets=forbidden_label_sets
        )
        if mix.foreign_labels and rng.random() < mix.foreign_labels:
            rule = with_foreign_labels(rng, rule)
        return rule

    if rng.random() < mix.facts:
        tokens, mask = fact_sequence(rng, max_tokens)
    elif mix.copy and rng.random() < mix.copy:
        tokens, mask = copy_sequence(rng, max_tokens)
    elif mix.definition_blocks and rng.random() < mix.definition_blocks:
        tokens, mask = definition_blocks_sequence(rng, draw, max_tokens, tokenize)
    elif mix.induction_blocks and rng.random() < mix.induction_blocks:
        tokens, mask = induction_blocks_sequence(
            rng,
            draw,
            max_tokens,
            tokenize,
            zero_shot_answers=mix.zero_shot_answers,
            answers_after=mix.induction_answers_after,
        )
    else:
        rule = draw()
        definition = None
        if rng.random() < mix.definition_prefix:
            definition = tokenize(rule.definition(rng.randrange(3)))
        tk_layout = rng.random() < mix.tk_layout
        lexicon = None
        if mix.bursty and rng.random() < mix.bursty:
            lexicon = {cat: tuple(rng.sample(CATEGORIES[cat], 3)) for cat in rule.categories}
        preamble = None
        if mix.zero_shot_preamble and rng.random() < mix.zero_shot_preamble:
            preamble = preamble_tokens(rng, seed, soup=mix.preamble_soup)
        tokens, mask = task_sequence(
            rng,
            rule,
            max_tokens,
            definition_tokens=definition,
            tk_layout=tk_layout,
            lexicon=lexicon,
            zero_shot_answers=mix.zero_shot_answers,
            preamble=preamble,
            zero_shot_word=mix.zero_shot_target == "word",
        )
    if mix.all_tokens_loss:
        mask = [False] + [True] * (len(tokens) - 1)
    return tokens, mask


def vocabulary_texts(seed: int, *, generation: int = 1) -> list[str]:
    """Every string whose words the world tokenizer must know; generation 2 adds novel words."""
    rng = random.Random(seed)
    texts = [" ".join(w) for w in CATEGORIES.values()] + [" ".join(LABEL_WORDS)]
    texts += [" ".join(v) for v in CATEGORY_NOUN.values()] + [" ".join(CATEGORY_NOUN)]
    for heldout in (False, True):
        for _ in range(600):
            rule = draw_rule(rng, seed=seed, heldout=heldout)
            texts += [rule.definition(t) for t in range(3)]
            texts.append(f"The rule gives {rule.labels[0]}, not {rule.labels[1]}.")
    texts += [
        "Positive Example - Now complete the following example - Explanation: is",
        " ".join(str(i) for i in range(64)),
        'Answer "a" or "b". Answer "a", "b" or "c". Answer with a short text. Answer with one of',
        '. , ; : ! ? - ( ) [ ] \' " ". ", "; ": ." ," ).',
    ]
    if generation >= 2:
        texts.append(" ".join(NOVEL_LABEL_WORDS))
    return texts
