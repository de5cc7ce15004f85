"""Text metrics with the Super-NaturalInstructions conventions.

Normalisation (as in SuperNI's ``compute_metrics.py``): lower-case, strip ASCII
punctuation, collapse whitespace; articles are kept. Scores are the maximum over
references, on a 0-100 scale. ROUGE-L is the F-measure of ``rouge_score`` with
Porter stemming; its tokenizer keeps non-ASCII letters, which the package's
default tokenizer would silently drop (and which is identical to it on ASCII).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rouge_score pulls nltk (and nltk scipy): imported only when scoring
    from rouge_score import rouge_scorer

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def normalize_answer(text: str) -> str:
    """SuperNI answer normalisation: lower-case, drop punctuation, collapse spaces."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    """The ROUGE-L scorer, built on first use (its imports cost most of a second)."""
    from nltk.stem import porter
    from rouge_score import rouge_scorer
    from rouge_score.tokenizers import Tokenizer

    class _UnicodeStemmingTokenizer(Tokenizer):
        """rouge_score's default tokenisation, extended to non-ASCII word characters."""

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


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """ROUGE-L F-measure (Porter stemming), max over references, 0-100."""
    pred = normalize_answer(prediction)
    scorer = _scorer()
    return 100.0 * max(
        scorer.score(target=normalize_answer(r), prediction=pred)["rougeL"].fmeasure
        for r in _as_references(references)
    )
