"""EM and ROUGE-L follow the Super-NaturalInstructions conventions.

Normalisation: lower-case, strip ASCII punctuation, collapse whitespace, keep
articles; max over references; 0-100; ROUGE-L F with Porter stemming.
"""

from __future__ import annotations

import random
import string

import pytest
from rouge_score import rouge_scorer

from tunelens import exact_match, rouge_l
from tunelens.measures.text import normalize_answer

WORDS = [
    "the",
    "a",
    "an",
    "cat",
    "cats",
    "running",
    "runs",
    "run",
    "dog",
    "dogs",
    "Yes",
    "no",
    "don't",
    "well-known",
    "U.S.",
    "3.5",
    "(maybe)",
    "fox",
    "jumped",
    "jumping",
    "over",
    "quickly",
    "Quick",
    "entailment",
    "contradiction",
    "neutral",
    "42",
    "x",
    "Hello,",
    "world!",
]


def superni_normalize(text: str) -> str:
    """SuperNI's normalize_answer, written out independently."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return " ".join(text.split())


def reference_rouge_l(prediction: str, references: list[str]) -> float:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return 100 * max(
        scorer.score(superni_normalize(r), superni_normalize(prediction))["rougeL"].fmeasure
        for r in references
    )


def random_text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 8)))


def test_agrees_with_rouge_score_and_superni_em_on_random_ascii_pairs():
    rng = random.Random(0)
    for _ in range(400):
        prediction = random_text(rng)
        references = [random_text(rng) for _ in range(rng.randint(1, 3))]
        assert rouge_l(prediction, references) == pytest.approx(
            reference_rouge_l(prediction, references), abs=1e-9
        )
        expected_em = (
            100.0
            if any(superni_normalize(prediction) == superni_normalize(r) for r in references)
            else 0.0
        )
        assert exact_match(prediction, references) == expected_em


@pytest.mark.parametrize(
    ("prediction", "reference", "em"),
    [
        ("The Cat.", "the cat", 100.0),  # case and punctuation
        ("  Yes. ", "yes", 100.0),  # whitespace and trailing period
        ("a cat", "cat", 0.0),  # articles are kept
        ("the cat", "cat", 0.0),
        ("Entailment", "entailment", 100.0),
        ("", "cat", 0.0),  # empty prediction
        ("Ça va", "ça va", 100.0),  # non-ASCII case folding
    ],
)
def test_exact_match_hand_cases(prediction, reference, em):
    assert exact_match(prediction, reference) == em


def test_exact_match_takes_the_max_over_references():
    assert exact_match("No!", ["yes", "no"]) == 100.0
    assert exact_match("maybe", ["yes", "no"]) == 0.0
    with pytest.raises(ValueError):
        exact_match("x", [])


def test_rouge_l_hand_cases():
    # LCS 3 of 3 predicted and 6 reference tokens: P = 1, R = 1/2, F = 2/3.
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(200 / 3)
    # Porter stemming: running -> run, dogs -> dog.
    assert rouge_l("running dogs", "run dog") == pytest.approx(100.0)
    # Punctuation and case vanish before scoring.
    assert rouge_l("Hello, World!", "hello world") == pytest.approx(100.0)
    # Max over references: F(the cat | the cat sat) = 2 * 1 * 2/3 / (1 + 2/3) = 0.8.
    assert rouge_l("the cat", ["dog", "the cat sat"]) == pytest.approx(80.0)
    # Articles count as tokens: "a cat" vs "cat" has P = 1/2, R = 1, F = 2/3.
    assert rouge_l("a cat", "cat") == pytest.approx(200 / 3)
    assert rouge_l("", "cat") == 0.0
    assert rouge_l("cat", "dog") == 0.0


def test_rouge_l_keeps_non_ascii_words():
    # Tokens [straße, groß] vs [straße]: LCS 1, P = 1/2, R = 1, F = 2/3.
    # (rouge_score's own tokenizer would split on ß and score "stra e gro" instead.)
    assert rouge_l("Straße groß", "straße") == pytest.approx(200 / 3)
    assert rouge_l("東京 大阪", "東京") == pytest.approx(200 / 3)
    assert rouge_l("groß", "klein") == 0.0
    assert normalize_answer("Straße, GROSS!") == "straße gross"
