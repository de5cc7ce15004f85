"""`tunelens convergence` and `tunelens audit`: one study each, from command-line options.

Each builds a spec with one section (the same pydantic models as a YAML spec,
so defaults and checks are shared) and runs it like `tunelens run`: resumable
cells under DIR/cells/, then DIR/results.json, DIR/report.html and DIR/plots/.
The options are generated from the section's model (its fields but those the
study's top level sets: models, dtype, device, model) and from the spec's common
settings (:data:`tunelens.commands.options.STUDY`), so their help and defaults
are the spec's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tunelens.commands.apps import app
from tunelens.commands.config_options import ConfigOptions, with_config_options
from tunelens.commands.options import (
    STUDY,
    AddressOption,
    ExecutorOption,
    NoProgressOption,
    OutOption,
    WaitOption,
)
from tunelens.commands.tuning_options import TUNING
from tunelens.experiments.audit.spec import AuditSpec
from tunelens.experiments.convergence.spec import ConvergenceSpec

TOP_LEVEL = frozenset({"models", "model", "dtype", "device"})
"""Section fields the study's top level sets (``--model``, ``--dtype``, ``--device``)."""

CONVERGENCE = ConfigOptions(
    ConvergenceSpec,
    key="section",
    panel="Convergence",
    exclude=TOP_LEVEL,
    nested={"tuning": TUNING},
    given_only=True,
)
AUDIT = ConfigOptions(
    AuditSpec,
    key="section",
    panel="Audit",
    exclude=TOP_LEVEL,
    nested={"tuning": TUNING},
    given_only=True,
)


def _run(
    section_name: str,
    section: dict[str, Any],
    study: dict[str, Any],
    out: Path,
    executor: str,
    progress: bool,
    address: str | None = None,
    wait: bool = False,
) -> None:
    from tunelens.report.html import build_report
    from tunelens.runs.ranks import is_main_process
    from tunelens.runs.study import RESULTS, run_study
    from tunelens.spec import validate_spec

    source = f"tunelens {section_name}"
    spec = validate_spec({**study, section_name: section}, source=source)
    run_study(
        spec, out, executor=executor, address=address, progress=progress, source=source, wait=wait
    )
    if not is_main_process():
        return  # another rank of accelerate launch / torchrun: rank 0 writes and reports
    typer.echo(f"results: {out / RESULTS}")
    typer.echo(f"report:  {build_report(out)}")
    say_limited(spec.limit)


def say_limited(limit: int | None) -> None:
    """The line a limited run ends with (stderr, so stdout stays the paths)."""
    if limit is not None:
        from tunelens.runs.limit import limit_note

        typer.echo(limit_note(limit), err=True)


@app.command("convergence")
@with_config_options(CONVERGENCE, STUDY)
def convergence(
    out: OutOption = Path("runs/convergence"),
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    no_progress: NoProgressOption = False,
    wait: WaitOption = False,
    *,
    section: dict[str, Any],
    study: dict[str, Any],
) -> None:
    """Does ICL move hidden states where instruction tuning does? Layer by layer, with stats."""
    _run("convergence", section, study, out, executor, not no_progress, address, wait)


@app.command("audit")
@with_config_options(AUDIT, STUDY)
def audit(
    out: OutOption = Path("runs/audit"),
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    no_progress: NoProgressOption = False,
    wait: WaitOption = False,
    *,
    section: dict[str, Any],
    study: dict[str, Any],
) -> None:
    """Did tuning teach the task, or only the output format? Zero-shot on held-out tasks."""
    _run("audit", section, study, out, executor, not no_progress, address, wait)
