"""The function-vectors answer in sentences, each derived from numbers of one results entry.

Rules: a difference counts only where its 95% CI excludes 0; the share of the
ICL gain is quoted only where the aggregate gave one (the ICL gain significant),
otherwise it is undecided with its reason; the best layer is the one chosen on
the dev queries and its accuracy is that of the test queries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunelens.report.html import fmt_number

__all__ = ["estimate", "head_name", "verdict_sentences"]


def estimate(value: Any, signed: bool = False) -> str:
    """'0.812 [0.75, 0.86]' from a ``{"mean", "ci"}`` summary ('n/a' where absent)."""
    if not isinstance(value, Mapping):
        return fmt_number(value, signed)
    ci = value.get("ci") or [None, None]
    text = fmt_number(value.get("mean"), signed)
    if ci[0] is None and ci[1] is None:
        return text
    return f"{text} [{fmt_number(ci[0])}, {fmt_number(ci[1])}]"


def head_name(head: Mapping[str, Any]) -> str:
    """'head 2 of layer 3' (layer L: the block that writes residual layer L)."""
    return f"head {head['head']} of layer {head['layer']}"


def _significant(value: Any) -> int:
    """+1 / -1 where a summary's CI lies above / below 0, else 0."""
    ci = (value or {}).get("ci") or [None, None]
    if ci[0] is not None and ci[0] > 0:
        return 1
    if ci[1] is not None and ci[1] < 0:
        return -1
    return 0


def _vector_sentences(entry: Mapping[str, Any]) -> list[str]:
    best = entry.get("best")
    if not best:
        return ["The function vector was not evaluated (no vector cells finished)."]
    h = entry.get("top_h")
    gain = best.get("vector_gain_test")
    moved = {1: "raises", -1: "lowers", 0: "does not significantly change"}[_significant(gain)]
    first = (
        f"Adding the function vector of the top {h} heads after layer {best['layer']} (chosen "
        f"on the dev queries) {moved} zero-shot accuracy on the test queries: "
        f"{estimate(best.get('zero_shot_test'))} without it, "
        f"{estimate(best.get('accuracy_test'))} with it "
        f"(difference {estimate(gain, signed=True)}); in-context learning with "
        f"k = {entry.get('k')} reaches {estimate(best.get('icl_test'))}."
    )
    share = best.get("share_of_icl_gain") or {}
    if share.get("mean") is None:
        reason = share.get("undecided") or "it cannot be estimated"
        second = f"The share of the ICL gain it recovers is undecided: {reason}."
    else:
        second = f"It recovers {estimate(share)} of the ICL gain."
    return [first, second]


def _heads_sentence(entry: Mapping[str, Any]) -> str:
    tops = entry.get("top_heads") or []
    if not tops:
        return "No head was measured."
    lead = tops[0]
    layers = sorted({t["layer"] for t in tops})
    positive = sum(1 for t in tops if _significant(t.get("aie")) > 0)
    return (
        f"The highest average indirect effect is {head_name(lead)}: its mean in-context "
        f"output, patched into shuffled-label prompts, changes the probability of the "
        f"correct label by {estimate(lead.get('aie'), signed=True)}. The top {len(tops)} "
        f"heads sit in layer(s) {', '.join(str(x) for x in layers)}; {positive} of them "
        "have an effect whose CI lies above 0."
    )


def verdict_sentences(entry: Mapping[str, Any]) -> list[str]:
    """The answer first: what the vector does, then which heads carry it."""
    return [*_vector_sentences(entry), _heads_sentence(entry)]
