"""Text metrics equal to Super-NaturalInstructions' official ``compute_metrics.py``.

The official script (Tk-Instruct / SuperNI, English track):

- **exact match**: ``normalize_answer`` on both strings (lower-case, drop ASCII
  punctuation, collapse whitespace; articles are *kept*), then equality;
- **ROUGE-L**: ``rouge_score.rouge_scorer.RougeScorer(['rougeL'],
  use_stemmer=True).score(target=gold, prediction=pred)`` on the *raw* strings
  (rouge_score's default tokenizer lower-cases, splits on anything but
  ``[a-z0-9]`` and Porter-stems tokens longer than 3 characters), F-measure;
- the maximum over references, x100.

So ``"not_entailment"`` vs ``"not entailment"`` is 100.0 ROUGE-L (the
underscore splits) and 0.0 EM; ``"It's fine"`` vs ``"its fine"`` is 40.0
ROUGE-L and 100.0 EM.

The default tokenizer drops every non-ASCII character (the official script
switches to a GPT-2 tokenizer for its cross-lingual track). ``tokenizer=
"unicode"`` is **tunelens's own** option for such text, never the default and
not the benchmark's: the same rule with Unicode word characters (``[^\\W_]+``),
stemming ASCII tokens only. On ASCII text it equals the default.

Per category, Tk-Instruct reports exact match for six classification
categories and ROUGE-L for the rest (:func:`headline_metric`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # rouge_score pulls nltk (and nltk scipy): imported only when scoring
    from rouge_score import rouge_scorer

RougeTokenizer = Literal["default", "unicode"]
ROUGE_TOKENIZERS: tuple[str, ...] = ("default", "unicode")

# Tk-Instruct's compute_metrics.py: these categories are scored by exact match, the rest
# by ROUGE-L (names compared as "_".join(category.lower().split())).
EM_CATEGORIES: tuple[str, ...] = (
    "Textual Entailment",
    "Cause Effect Classification",
    "Coreference Resolution",
    "Dialogue Act Recognition",
    "Answerability Classification",
    "Word Analogy",
)
_EM_KEYS = frozenset("_".join(c.lower().split()) for c in EM_CATEGORIES)

_PUNCTUATION = frozenset(string.punctuation)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def normalize_answer(text: str) -> str:
    """SuperNI answer normalisation: lower-case, drop punctuation, collapse spaces."""
    lowered = text.lower()
    return " ".join("".join(ch for ch in lowered if ch not in _PUNCTUATION).split())


def headline_metric(category: str) -> Literal["em", "rouge_l"]:
    """Tk-Instruct's metric for a category: ``"em"`` for the six classification ones."""
    return "em" if "_".join(category.lower().split()) in _EM_KEYS else "rouge_l"


@lru_cache(maxsize=2)
def _scorer(tokenizer: str = "default") -> rouge_scorer.RougeScorer:
    """A ROUGE-L scorer, built on first use (its imports cost most of a second)."""
    from rouge_score import rouge_scorer  # lazy: ~1 s (nltk); `tunelens --help` imports this

    if tokenizer == "default":
        return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    if tokenizer != "unicode":
        raise ValueError(f"unknown ROUGE tokenizer {tokenizer!r}; use one of {ROUGE_TOKENIZERS}")
    from nltk.stem import porter  # lazy: as rouge_score above
    from rouge_score.tokenizers import Tokenizer  # lazy: as rouge_score above

    class _UnicodeStemmingTokenizer(Tokenizer):
        """tunelens's own: rouge_score's default rule over Unicode word characters."""

        def __init__(self) -> None:
            self._stemmer = porter.PorterStemmer()  # the stemmer rouge_score itself uses

        def tokenize(self, text: str) -> list[str]:
            tokens = _WORD.findall(text.lower())
            return [self._stemmer.stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeStemmingTokenizer())


def _as_references(references: str | Sequence[str]) -> list[str]:
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("at least one reference is needed")
    return refs


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """100 if the normalised prediction equals any normalised reference, else 0."""
    pred = normalize_answer(prediction)
    return 100.0 if any(pred == normalize_answer(r) for r in _as_references(references)) else 0.0


def rouge_l(
    prediction: str, references: str | Sequence[str], tokenizer: RougeTokenizer = "default"
) -> float:
    """ROUGE-L F-measure on the raw strings, max over references, 0-100 (official values).

    ``tokenizer="unicode"`` is tunelens's own option for non-English text (see the
    module docstring); the default is the official scorer.
    """
    scorer = _scorer(tokenizer)
    return 100.0 * max(
        scorer.score(target=r, prediction=prediction)["rougeL"].fmeasure
        for r in _as_references(references)
    )
