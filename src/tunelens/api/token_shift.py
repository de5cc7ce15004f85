"""The typed shape of a token-distribution-shift summary, shared by the audit and ``decide``.

What :func:`tunelens.measures.token_shift.summarise` writes (and each experiment stores
in its own results: results.json ``audit_token_shift``, decide.json's tuned methods):
percents of the tuned model's output tokens that the untuned model ranks first
(``unshifted``), second or third (``marginal``) or lower (``shifted``), each a mean over
units (tasks or items) with its 95% interval, ``n`` and ``method``.
"""

from __future__ import annotations

from tunelens.api.results import ResultsModel, Stat

__all__ = ["ShiftedToken", "TokenShift", "TokenShiftUnit"]


class ShiftedToken(ResultsModel):
    """A token the untuned model ranked below its top 3: its text, id, how often it was
    shifted and how often the tuned model wrote it at all."""

    token: str
    id: int
    shifted: int
    occurrences: int


class TokenShiftUnit(ResultsModel):
    """One task's (or item's) percents of unshifted, marginal and shifted positions."""

    unshifted: float
    marginal: float
    shifted: float
    positions: int


class TokenShift(ResultsModel):
    """Token distribution shift of one tuned model's output (Lin et al. 2023).

    ``unit``: what the intervals are over (``task`` or ``item``), ``n_units`` of them
    and ``n_positions`` output tokens. ``counts``: positions per bucket.
    ``shifted_by_kind``: shifted positions that are format tokens, label tokens where
    the untuned model preferred no label (``into_label_space``), label tokens where it
    preferred another label (``between_labels``), or other tokens. ``label_or_format``
    and ``format_like`` (format + into the label space): percents of the shifted
    positions, over the units that have one. ``top_shifted``: per category (label,
    format, other) the most shifted tokens. ``reading``: the sentence the report shows.
    """

    unit: str
    n_units: int
    n_positions: int
    unshifted: Stat | None
    marginal: Stat | None
    shifted: Stat | None
    counts: dict[str, int]
    shifted_by_kind: dict[str, int]
    label_or_format: Stat | None = None
    format_like: Stat | None = None
    top_shifted: dict[str, list[ShiftedToken]]
    per_unit: dict[str, TokenShiftUnit] | None = None
    reading: str | None = None
