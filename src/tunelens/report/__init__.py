"""The reports: report.html from results.json, and a page per experiment that keeps a
results file of its own (``Experiment.results_file``: ``X.json`` -> ``X.html``).

Both are rendered from Jinja2 templates (``templates/``: one base page, the study page,
the macros; each experiment's section or page template in its own package) by
:mod:`tunelens.report.html`, which asks the experiment registry for the sections and
never names an experiment. :func:`build_any_report` rebuilds whichever a run directory
holds (``tunelens report DIR``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["build_any_report"]


def build_any_report(out_dir: str | Path) -> list[Path]:
    """Rebuild every report that ``out_dir`` has the data for; returns the pages written.

    Each experiment's own results file that is there gives its page
    (:func:`tunelens.report.html.build_page`), then ``results.json`` gives ``report.html``
    (:func:`tunelens.report.html.build_report`); a directory with neither is a
    TunelensInputError naming results.json.
    """
    from tunelens.api import get_experiments
    from tunelens.report.html import RESULTS, build_page, build_report

    out = Path(out_dir)
    written = []
    for experiment in get_experiments().values():
        own = experiment.results_file
        if own != RESULTS and (out / own).is_file():
            written.append(build_page(out, experiment))
    if (out / RESULTS).is_file() or not written:
        written.append(build_report(out))  # without results.json: the error says what to run
    return written
