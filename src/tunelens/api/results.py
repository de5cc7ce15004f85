"""Typed results: the generic pydantic models every experiment's results models build on.

Each experiment owns the models of its own keys (``tunelens.experiments.<name>``'s
results models) and validates them itself; here are the pieces they share:
:class:`ResultsModel` (extra keys allowed, lossless dump), :class:`Stat`,
:class:`WilcoxonTest`, :class:`TuningInfo`, the common keys of results.json
(:class:`StudyResults`) and :func:`parse_file` / :func:`dump_as`.

Each model names the keys its producer writes today (and README documents);
models allow extra keys, so an experiment can add values without touching
them and the report shows what it does not know as plain tables. A number
that a producer may write as a whole number (counts, sizes, seeds) is typed
``int | float`` (:data:`Number`) so that dumping keeps its JSON spelling.

Validating and dumping is lossless: ``dump_as(Model, data)`` returns the same keys
and values as ``data`` (``exclude_unset``: an optional key absent from the input
stays absent, a ``null`` stays ``null``). The aggregators write their sections
through these, so a renamed or missing key fails where it is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Number",
    "ResultsModel",
    "Stat",
    "StudyResults",
    "TuningInfo",
    "WilcoxonTest",
    "dump_as",
    "dump_study",
    "parse_file",
]

Number = Union[int, float]  # noqa: UP007 (a runtime alias; pydantic keeps int as int)
M = TypeVar("M", bound="ResultsModel")


class ResultsModel(BaseModel):
    """Base of every results model: extra keys allowed, lossless :meth:`dump`."""

    model_config = ConfigDict(extra="allow")

    def dump(self) -> dict[str, Any]:
        """JSON-ready dict of exactly the keys that were set (validated or constructed)."""
        return self.model_dump(mode="json", exclude_unset=True)


class Stat(ResultsModel):
    """A summary: ``{"mean": x, "ci": [lo, hi]}`` (95% bootstrap CI; null = non-finite)."""

    mean: float | None
    ci: list[float | None] = Field(min_length=2, max_length=2)


# ---------------------------------------------------------------- shared by experiments


class WilcoxonTest(ResultsModel):
    """Paired one-sided signed-rank test across pairs; ``p_holm``: Holm-corrected over layers."""

    statistic: float | None
    p: float | None
    p_holm: float | None
    effect: float | None


class TuningInfo(ResultsModel):
    """How a condition or method was tuned and what it adapted (every experiment that tunes).

    ``adapted``: ``requested`` target modules, the resolved ``modules``, the
    ``weights`` they hold in words (GPT-2's fused ``c_attn``: "q, k, v
    together") and ``n_modules`` adapted; full fine-tuning: every weight.
    ``adapted_modules``: the resolved module suffixes (``["all"]`` for full
    fine-tuning), e.g. ``["qkv_proj"]`` on Phi-3 under the default q/v request.
    """

    method: str | None = None
    adapted_modules: list[str] | None = None
    adapted: dict[str, Any] | None = None


# ---------------------------------------------------------------- results.json


class StudyResults(ResultsModel):
    """results.json's common keys (every one optional); each experiment's keys are extra
    here and validated by that experiment's own models (its ``report_part`` and
    ``tidy_rows``)."""

    spec: dict[str, Any] | None = None
    tunelens_version: str | None = None
    environment: dict[str, Any] | None = None
    limit: int | None = None  # a limited run (--limit N): at most N items per task


# ---------------------------------------------------------------- validate and dump


def parse_file(model: type[M], data: Any, *, source: str | None = None, what: str) -> M:
    """``data`` read back as ``model`` (a results file), or a TunelensInputError naming the key.

    ``what`` names the file kind in the message (``not a tunelens <what> file``); without
    ``source`` the caller that knows the file names it (``tunelens.report`` does).
    """
    from pydantic import ValidationError

    from tunelens.errors import TunelensInputError

    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise TunelensInputError(
            f"not a tunelens {what} file: {first['msg']}", source=source, where=where
        ) from None


def dump_as(model: type[M], data: Any) -> dict[str, Any]:
    """``data`` validated as ``model`` and dumped: the same keys and values (or an error)."""
    return model.model_validate(data).dump()


def dump_study(results: Mapping[str, Any]) -> dict[str, Any]:
    """A whole results.json, its common keys validated (the rest kept as they are)."""
    return dump_as(StudyResults, results)
