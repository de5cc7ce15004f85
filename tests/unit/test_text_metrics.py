"""EM and ROUGE-L equal Super-NaturalInstructions' official ``compute_metrics.py``.

The reference below is an independent transcription of the official script:
``normalize_answer`` (lower, drop ``string.punctuation``, collapse whitespace,
articles kept) for exact match; ``RougeScorer(['rougeL'], use_stemmer=True)
.score(target=gold, prediction=pred)`` on the raw strings for ROUGE-L; max over
references; x100.
"""

from __future__ import annotations

import random
import string

import pytest
from rouge_score import rouge_scorer

from tunelens import exact_match, rouge_l
from tunelens.measures.text import EM_CATEGORIES, headline_metric, normalize_answer

# Pieces chosen to hit every place where normalising before ROUGE would differ.
PIECES = [
    "the",
    "a",
    "an",
    "The",
    "A",
    "cat",
    "cats",
    "Cat",
    "running",
    "runs",
    "run",
    "ran",
    "dog",
    "dogs",
    "Yes",
    "yes.",
    "No",
    "no!",
    "don't",
    "It's",
    "its",
    "it's",
    "fine",
    "well-known",
    "e-mail",
    "e mail",
    "email",
    "U.S.",
    "US",
    "3.14",
    "314",
    "3,141",
    "1,000",
    "1.000",
    "10%",
    "$5",
    "not_entailment",
    "not entailment",
    "NOT_ENTAILMENT",
    "entailment",
    "contradiction",
    "neutral",
    "(maybe)",
    "[Link]",
    "x",
    "42",
    "Hello,",
    "world!",
    "Straße",
    "groß",
    "café",
    "naïve",
    "東京",
    "—",
    "–",
    "...",
    "?",
    "''",
    '"quoted"',
    "tab\there",
    "line\nbreak",
    "  ",
    "ORDER_PIZZA",
    "Sci/Tech",
    "POS",
    "generously",
    "generous",
    "happily",
    "happiness",
    "organization",
    "organisations",
]


def official_normalize_answer(s: str) -> str:
    """compute_metrics.py's normalize_answer (Squad v1.1 without removing articles)."""

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_punc(s.lower()))


OFFICIAL_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def official_em(prediction: str, references: list[str]) -> float:
    return 100.0 * max(
        float(official_normalize_answer(prediction) == official_normalize_answer(gold))
        for gold in references
    )


def official_rouge(prediction: str, references: list[str]) -> float:
    return 100.0 * max(
        OFFICIAL_SCORER.score(prediction=prediction, target=gold)["rougeL"].fmeasure
        for gold in references
    )


def random_text(rng: random.Random) -> str:
    n = rng.choice([0, 0, 1, 1, 2, 3, 5, 8])
    sep = rng.choice([" ", " ", "  ", "-", "_", ", "])
    return sep.join(rng.choice(PIECES) for _ in range(n))


def generated_cases(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        refs = [random_text(rng) for _ in range(rng.choice([1, 1, 2, 3]))]
        kind = rng.random()
        if kind < 0.25:  # a perturbed copy of a reference: case, punctuation, spaces
            base = rng.choice(refs)
            pred = rng.choice(
                [base.upper(), base + ".", f" {base} ", base.replace(" ", "_"), base.title()]
            )
        else:
            pred = random_text(rng)
        cases.append((pred, refs))
    return cases


HAND = [
    ("It's fine", ["its fine"]),
    ("not_entailment", ["not entailment"]),
    ("e-mail", ["e mail"]),
    ("3.14", ["314"]),
    ("", [""]),
    ("", ["cat"]),
    ("cat", [""]),
    ("The Cat.", ["the cat"]),
    ("a cat", ["cat"]),
    ("Straße groß", ["straße"]),
    ("东京 大阪", ["东京"]),
    ("running dogs", ["run dog", "cat"]),
    ("No!", ["yes", "no"]),
    ("1,000 cats", ["1000 cats", "one thousand cats"]),
]


@pytest.mark.parametrize(("prediction", "references"), HAND + generated_cases(400))
def test_equals_the_official_script(prediction, references):
    assert exact_match(prediction, references) == official_em(prediction, references)
    assert rouge_l(prediction, references) == pytest.approx(
        official_rouge(prediction, references), abs=1e-12
    )


def test_the_cases_the_issue_names():
    assert rouge_l("It's fine", "its fine") == pytest.approx(40.0)
    assert exact_match("It's fine", "its fine") == 100.0
    assert rouge_l("not_entailment", "not entailment") == pytest.approx(100.0)
    assert exact_match("not_entailment", "not entailment") == 0.0
    assert rouge_l("e-mail", "e mail") == pytest.approx(100.0)
    assert rouge_l("3.14", "314") == 0.0


def test_generated_cases_are_varied():
    cases = generated_cases(400)
    assert len(cases) >= 200
    assert any(len(refs) > 1 for _, refs in cases)
    assert any(pred == "" for pred, _ in cases)
    em = [exact_match(p, r) for p, r in cases]
    rl = [rouge_l(p, r) for p, r in cases]
    assert 0 < sum(e == 100.0 for e in em) < len(cases)
    assert any(0 < x < 100 for x in rl)
    # Cases where normalising before ROUGE would have changed the score.
    changed = sum(
        rouge_l(p, r)
        != pytest.approx(
            official_rouge(official_normalize_answer(p), [official_normalize_answer(x) for x in r])
        )
        for p, r in cases
    )
    assert changed >= 10


def test_exact_match_hand_cases():
    assert exact_match("  Yes. ", "yes") == 100.0
    assert exact_match("the cat", "cat") == 0.0  # articles are kept
    assert exact_match("Ça va", "ça va") == 100.0
    assert exact_match("maybe", ["yes", "no"]) == 0.0
    with pytest.raises(ValueError):
        exact_match("x", [])
    with pytest.raises(ValueError):
        rouge_l("x", [])
    assert normalize_answer("Straße, GROSS!") == "straße gross"


def test_rouge_l_hand_cases():
    # LCS 3 of 3 predicted and 6 reference tokens: P = 1, R = 1/2, F = 2/3.
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(200 / 3)
    assert rouge_l("the cat", ["dog", "the cat sat"]) == pytest.approx(80.0)
    # The official tokenizer drops non-ASCII: [stra, e, gro] vs [stra, e] -> F = 0.8.
    assert rouge_l("Straße groß", "straße") == pytest.approx(80.0)
    assert rouge_l("東京 大阪", "京都") == 0.0  # no tokens at all


def test_unicode_tokenizer_is_an_opt_in_option():
    # Tokens [straße, groß] vs [straße]: LCS 1, P = 1/2, R = 1, F = 2/3.
    assert rouge_l("Straße groß", "straße", tokenizer="unicode") == pytest.approx(200 / 3)
    assert rouge_l("東京 大阪", "東京", tokenizer="unicode") == pytest.approx(200 / 3)
    # On ASCII text it equals the official tokenizer.
    for pred, refs in generated_cases(100, seed=1):
        if all(s.isascii() for s in [pred, *refs]):
            assert rouge_l(pred, refs, tokenizer="unicode") == pytest.approx(rouge_l(pred, refs))
    with pytest.raises(ValueError):
        rouge_l("a", "a", tokenizer="gpt2")  # type: ignore[arg-type]


def test_headline_metric_per_category():
    for category in EM_CATEGORIES:
        assert headline_metric(category) == "em"
    assert headline_metric("textual  entailment") == "em"
    for category in ("Title Generation", "Question Rewriting", "Sentiment Analysis", "x"):
        assert headline_metric(category) == "rouge_l"
    assert len(EM_CATEGORIES) == 6
