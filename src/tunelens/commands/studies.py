"""The experiments' commands: ``tunelens <section>`` for each experiment that asks for one.

An experiment with ``command_help`` (convergence, audit) gets a command named
after its section that builds a spec with that one section (the same pydantic
model as a YAML spec, so defaults and checks are shared) and runs it like
``tunelens run``: resumable cells under DIR/cells/, then DIR/results.json,
DIR/report.html and DIR/plots/. Its options are generated from the section's
model (its fields but those the study's top level sets: models, dtype, device,
model) and from the spec's common settings
(:data:`tunelens.options.common.STUDY`), so their help and defaults are the
spec's. An experiment's own commands (decide, world eval) come from its
``cli_module``. Nothing here names an experiment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel

from tunelens.options.apps import app, examples
from tunelens.options.common import (
    STUDY,
    AddressOption,
    ExecutorOption,
    NoProgressOption,
    OutOption,
    WaitOption,
    say_limited,
)
from tunelens.options.config_options import ConfigOptions, with_config_options
from tunelens.options.tuning_options import TUNING

TOP_LEVEL = frozenset({"models", "model", "dtype", "device"})
"""Section fields the study's top level sets (``--model``, ``--dtype``, ``--device``)."""


def section_options(name: str, model: type[BaseModel]) -> ConfigOptions:
    """The options of a section's fields (those the top level sets aside), the tuning ones
    in their own panel."""
    nested = {"tuning": TUNING} if "tuning" in model.model_fields else {}
    return ConfigOptions(
        model,
        key="section",
        panel=name.replace("_", " ").capitalize(),
        exclude=TOP_LEVEL,
        nested=nested,
        given_only=True,
    )


def run_section(
    section_name: str,
    section: dict[str, Any],
    study: dict[str, Any],
    out: Path,
    executor: str,
    progress: bool,
    address: str | None = None,
    wait: bool = False,
) -> None:
    """A study of one section, as ``tunelens run`` runs a spec; then its report."""
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


def add_section_command(name: str, model: type[BaseModel], help_text: str) -> None:
    """``tunelens <name>``: the section's options and the study's, then one study of it."""

    def command(
        out: OutOption = Path(f"runs/{name}"),
        executor: ExecutorOption = "local",
        address: AddressOption = None,
        no_progress: NoProgressOption = False,
        wait: WaitOption = False,
        *,
        section: dict[str, Any],
        study: dict[str, Any],
    ) -> None:
        run_section(name, section, study, out, executor, not no_progress, address, wait)

    command.__doc__ = help_text
    command.__name__ = command.__qualname__ = name
    decorated = with_config_options(section_options(name, model), STUDY)(command)
    command_name = name.replace("_", "-")
    epilog = examples(
        (f"tunelens {command_name} --out runs/{name}", "this study alone, at its defaults"),
        (f"tunelens {command_name} --limit 5 --out runs/{name}-quick", "a quick look first"),
        (f"tunelens {command_name} --model ./my-model --out runs/{name}-mine", "your own model"),
    )
    app.command(command_name, help=help_text, epilog=epilog)(decorated)


def add_experiment_commands() -> None:
    """Each registered experiment's commands: one generated from its section where it asks
    for one (``command_help``), and those its own ``cli_module`` registers."""
    import importlib

    from tunelens.api import get_experiments

    for name, experiment in get_experiments().items():
        if experiment.command_help and experiment.section_model is not None:
            add_section_command(name, experiment.section_model, experiment.command_help)
        if experiment.cli_module:
            importlib.import_module(experiment.cli_module)
