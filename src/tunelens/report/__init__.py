"""The reports: report.html from results.json, decide.html from decide.json.

Both are rendered from ``templates/`` (one base page, a template per page and
per experiment section) by :mod:`tunelens.report.html`, with the figures of
:mod:`tunelens.report.plots`. :func:`build_any_report` rebuilds whichever a
run directory holds (``tunelens report DIR``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["build_any_report"]


def build_any_report(out_dir: str | Path) -> list[Path]:
    """Rebuild every report that ``out_dir`` has the data for; returns the pages written.

    ``decide.json`` gives ``decide.html`` (:func:`tunelens.experiments.decide.report.rebuild_report`),
    ``results.json`` gives ``report.html`` (:func:`tunelens.report.html.build_report`);
    a directory with neither is a TunelensInputError naming results.json.
    """
    from tunelens.experiments.decide.report import rebuild_report
    from tunelens.experiments.decide.runner import DECIDE_JSON
    from tunelens.report.html import build_report

    out = Path(out_dir)
    written = []
    if (out / DECIDE_JSON).is_file():
        written.append(rebuild_report(out))
    if (out / "results.json").is_file() or not written:
        written.append(build_report(out))  # without results.json: the error says what to run
    return written
