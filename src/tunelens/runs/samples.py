"""Per-sample logs: ``DIR/samples/<cell key>.jsonl``, one JSON object per line.

An experiment that keeps per-sample records in its cell results returns them
from :meth:`tunelens.api.Experiment.sample_logs` (the audit: instance id, exact
prompt, prediction, references and both scores). They are written from the
*stored* cells after every run, finished earlier or now, so a resumed run and
an uninterrupted one leave the same files; results.json never reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tunelens.runs.store import atomic_write_text, dumps

if TYPE_CHECKING:
    from tunelens.runs.study import SectionRun

SAMPLES_DIR = "samples"


def sample_log_path(out_dir: Path, key: str) -> Path:
    """Where a cell's per-sample log lives."""
    return Path(out_dir) / SAMPLES_DIR / f"{key}.jsonl"


def write_sample_logs(out_dir: Path, runs: Sequence[SectionRun]) -> list[Path]:
    """Write the per-sample log of every finished cell that has one; returns the paths."""
    written = []
    for run in runs:
        for cell, result in run.results:
            records = run.experiment.sample_logs(cell, result)
            if records is None:
                continue
            path = sample_log_path(out_dir, cell.key)
            text = "".join(dumps(record) + "\n" for record in records)
            if path.is_file() and path.read_text(encoding="utf-8") == text:
                continue
            atomic_write_text(path, text)
            written.append(path)
    return written
