"""`tunelens convergence` and `tunelens audit`: one study each, from command-line options.

Each builds a spec with one section (the same pydantic models as a YAML spec,
so defaults and checks are shared) and runs it like `tunelens run`: resumable
cells under DIR/cells/, then DIR/results.json, DIR/report.html and DIR/plots/.
"""

from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from tunelens.commands.apps import app
from tunelens.commands.tuning_options import with_tuning_options
from tunelens.errors import TunelensInputError
from tunelens.experiments.audit.spec import AuditSpec
from tunelens.experiments.convergence.spec import ConvergenceSpec
from tunelens.models.tuning.config import TuningConfig
from tunelens.spec import Spec


def comma_list(option: str, text: str | None, kind: type = str) -> list[Any] | None:
    """'1,2,4' -> [1, 2, 4]; None stays None (the spec's default)."""
    if text is None:
        return None
    items = [piece.strip() for piece in text.split(",") if piece.strip()]
    if not items:
        raise TunelensInputError(f"{option} needs at least one value")
    try:
        if kind is bool:
            truth = {
                "true": True,
                "on": True,
                "yes": True,
                "false": False,
                "off": False,
                "no": False,
            }
            return [truth[item.lower()] for item in items]
        return [item if kind is str or item == "full" else kind(item) for item in items]
    except (KeyError, ValueError):
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise TunelensInputError(
            f"{option}: cannot read {shown!r} as comma-separated {kind.__name__} values"
        ) from None


def show_spec_defaults(
    model: type[BaseModel],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Show the spec's default in ``--help`` for every option left at None (None means: the
    spec's default), so the help never says less than ``examples/specs/default.yaml``."""

    def shown(value: Any) -> str | None:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, list | tuple):
            if not value:
                return None
            return ",".join(shown(v) or "" for v in value)
        return None if value is None else str(value)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(command, include_extras=True)
        for parameter in inspect.signature(command).parameters.values():
            field = model.model_fields.get(parameter.name)
            hint = hints.get(parameter.name)
            if parameter.default is not None or field is None or hint is None:
                continue
            if typing.get_origin(hint) is not Annotated:
                continue
            base, *meta = typing.get_args(hint)
            text = shown(field.default)
            if text is None:
                continue
            infos = []
            for info in meta:
                if isinstance(info, typer.models.OptionInfo):
                    info = copy.copy(info)  # shared aliases (SeedsOption) differ per command
                    info.show_default = text
                infos.append(info)
            args = (base, *infos)
            command.__annotations__[parameter.name] = Annotated.__class_getitem__(args)
        return command

    return decorate


def _section(**options: Any) -> dict[str, Any]:
    """Options the user gave (None means: keep the spec's default)."""
    return {key: value for key, value in options.items() if value is not None}


def _run(
    section_name: str,
    section: dict[str, Any],
    top: dict[str, Any],
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
    spec = validate_spec({**top, section_name: section}, source=source)
    run_study(
        spec, out, executor=executor, address=address, progress=progress, source=source, wait=wait
    )
    if not is_main_process():
        return  # another rank of accelerate launch / torchrun: rank 0 writes and reports
    typer.echo(f"results: {out / RESULTS}")
    typer.echo(f"report:  {build_report(out)}")
    say_limited(spec.limit)


def placement(device_map: str | None, max_memory: str | None) -> dict[str, str]:
    """``--device-map`` / ``--max-memory`` read as the spec reads them (errors name the option)."""
    from tunelens.models.loading import parse_device_map, parse_max_memory

    checks = (
        ("--device-map", device_map, parse_device_map),
        ("--max-memory", max_memory, parse_max_memory),
    )
    for option, value, parse in checks:
        if value is not None:
            try:
                parse(value)
            except TunelensInputError as error:
                raise TunelensInputError(error.message, where=option) from None
    if max_memory is not None and device_map is None:
        raise TunelensInputError(
            "needs --device-map (e.g. --device-map auto)", where="--max-memory"
        )
    return _section(device_map=device_map, max_memory=max_memory)


def say_limited(limit: int | None) -> None:
    """The line a limited run ends with (stderr, so stdout stays the paths)."""
    if limit is not None:
        from tunelens.runs.limit import limit_note

        typer.echo(limit_note(limit), err=True)


ModelOption = Annotated[str, typer.Option(help="'world' or a local Hugging Face model directory.")]
OutOption = Annotated[Path, typer.Option(help="Run directory; re-run the command to resume.")]
SeedsOption = Annotated[str | None, typer.Option(help="Comma-separated seeds.")]
BaseSeedOption = Annotated[
    int,
    typer.Option(
        "--seed",
        min=0,
        help="Base seed (the spec's top-level seed): without --seeds, the default seeds are "
        "shifted by it.",
    ),
]
ExecutorOption = Annotated[
    str, typer.Option(help="Where cells run: 'local' (this process) or 'ray' (Ray tasks).")
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster address (e.g. 'auto', 'ray://head:10001'); default: a local Ray "
        "instance. Needs --executor ray."
    ),
]
DtypeOption = Annotated[str, typer.Option(help="float32, bfloat16 or float16.")]
DeviceOption = Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda:0.")]
# Placement options: their help is the spec field's description (tunelens.spec.Spec).
DeviceMapOption = Annotated[
    str | None,
    typer.Option(
        "--device-map",
        help=Spec.model_fields["device_map"].description,
        show_default="none (one device)",
    ),
]
MaxMemoryOption = Annotated[
    str | None,
    typer.Option(
        "--max-memory", help=Spec.model_fields["max_memory"].description, show_default="none"
    ),
]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="No progress bars.")]
LimitOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="A quick look: at most N anchors / evaluation instances per task (cell keys and "
        "results.json record it; the run says it is limited). Default: no limit.",
    ),
]
AllowMissingOption = Annotated[
    bool,
    typer.Option(
        "--allow-missing-tasks",
        help="Skip the tasks a split file names that have no file (a partial copy of the "
        "benchmark) instead of stopping.",
    ),
]
SaveAdaptersOption = Annotated[
    bool,
    typer.Option(
        "--save-adapters",
        help="Keep the tuned adapters of the cells this run computes in DIR/adapters/<cell "
        "key>/ (PEFT format); results and cell keys do not change.",
    ),
]
WaitOption = Annotated[
    bool,
    typer.Option("--wait", help="If another run holds DIR (DIR/.lock), wait for it to end."),
]


@app.command("convergence")
@with_tuning_options(ConvergenceSpec.model_fields["tuning"].default)
@show_spec_defaults(ConvergenceSpec)
def convergence(
    model: ModelOption = "world",
    tasks: Annotated[
        str,
        typer.Option(
            help="Tasks: a path (SuperNI JSON, directory, split file, JSONL) or world:heldout."
        ),
    ] = "world:heldout",
    out: OutOption = Path("runs/convergence"),
    k: Annotated[str | None, typer.Option(help="Demonstrations per set, e.g. 1,2,4,8,16.")] = None,
    n_pairs: Annotated[int | None, typer.Option(help="(set, anchor) pairs per seed.")] = None,
    seeds: SeedsOption = None,
    seed: BaseSeedOption = 0,
    flip_fraction: Annotated[
        str | None, typer.Option(help="Shares of flipped demonstration labels, e.g. 0,0.5,1.")
    ] = None,
    relevance: Annotated[str | None, typer.Option(help="same and/or other.")] = None,
    definition: Annotated[
        str | None,
        typer.Option(
            help="Definition in ICL and anchor prompts: false, true or both (false,true)."
        ),
    ] = None,
    controls: Annotated[
        str | None, typer.Option(help="none, random_init, shuffled (comma-separated).")
    ] = None,
    template: Annotated[str | None, typer.Option(help="plain, tk or chat.")] = None,
    tuning_methods: Annotated[
        str | None,
        typer.Option(help="Tuning methods to sweep: lora, full (default: --tuning-method only)."),
    ] = None,
    lora_ranks: Annotated[
        str | None, typer.Option(help="LoRA ranks to sweep, e.g. 4,8,16 (default: --lora-r only).")
    ] = None,
    target_module_sets: Annotated[
        str | None,
        typer.Option(
            help="LoRA target module sets to sweep, sets separated by ';', modules by ',': "
            "e.g. 'q_proj,v_proj;all-linear' (default: --target-modules only)."
        ),
    ] = None,
    patching: Annotated[
        bool | None,
        typer.Option(
            "--patching/--no-patching",
            help="Activation patching of ICL and IT states into the zero-shot forward "
            "(default: on for the world model, off otherwise).",
            show_default=False,
        ),
    ] = None,
    patching_layers: Annotated[
        str | None, typer.Option(help="Layers to patch, e.g. 1,2 (default: every layer).")
    ] = None,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
    device_map: DeviceMapOption = None,
    max_memory: MaxMemoryOption = None,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    no_progress: NoProgress = False,
    wait: WaitOption = False,
    limit: LimitOption = None,
    allow_missing_tasks: AllowMissingOption = False,
    save_adapters: SaveAdaptersOption = False,
    tuning: TuningConfig | None = None,
) -> None:
    """Does ICL move hidden states where instruction tuning does? Layer by layer, with stats."""
    module_sets = None
    if target_module_sets is not None:
        pieces = [p for p in target_module_sets.split(";") if p.strip()]
        module_sets = [comma_list("--target-module-sets", piece) for piece in pieces]
    section = _section(
        tasks=tasks,
        n_pairs=n_pairs,
        k=comma_list("--k", k, int),
        seeds=comma_list("--seeds", seeds, int),
        flip_fraction=comma_list("--flip-fraction", flip_fraction, float),
        relevance=comma_list("--relevance", relevance),
        definition=comma_list("--definition", definition, bool),
        controls=comma_list("--controls", controls),
        template=template,
        tuning=tuning,
        tuning_methods=comma_list("--tuning-methods", tuning_methods),
        lora_ranks=comma_list("--lora-ranks", lora_ranks, int),
        target_module_sets=module_sets or None,
        patching=patching,
        patching_layers=comma_list("--patching-layers", patching_layers, int),
    )
    _run(
        "convergence",
        section,
        {
            "model": model,
            "dtype": dtype,
            "device": device,
            **_section(device_map=device_map, max_memory=max_memory),
            "seed": seed,
            "limit": limit,
            "allow_missing_tasks": allow_missing_tasks,
            "save_adapters": save_adapters,
        },
        out,
        executor,
        not no_progress,
        address,
        wait,
    )


@app.command("audit")
@with_tuning_options(AuditSpec.model_fields["tuning"].default)
@show_spec_defaults(AuditSpec)
def audit(
    model: ModelOption = "world",
    train: Annotated[str, typer.Option(help="Training tasks (path or world:train).")] = (
        "world:train"
    ),
    test: Annotated[str, typer.Option(help="Held-out tasks (path or world:heldout).")] = (
        "world:heldout"
    ),
    out: OutOption = Path("runs/audit"),
    definitions: Annotated[
        str | None, typer.Option(help="Definition while tuning: original, simplified, none.")
    ] = None,
    examples: Annotated[
        str | None, typer.Option(help="Examples while tuning: original, delusive, none.")
    ] = None,
    instances_per_task: Annotated[
        str | None, typer.Option(help="Training instances per task, e.g. 5,50,full.")
    ] = None,
    seeds: SeedsOption = None,
    seed: BaseSeedOption = 0,
    eval_instances_per_task: Annotated[
        int | None, typer.Option(help="Held-out instances scored per task.")
    ] = None,
    eval_encodings: Annotated[
        str | None,
        typer.Option(
            help="Held-out prompt encodings: definition_only (truly zero-shot), "
            "definition_examples (Tk-Instruct: definition + 2 positive examples); the first leads."
        ),
    ] = None,
    rouge_tokenizer: Annotated[
        str | None,
        typer.Option(help="ROUGE-L tokenizer: default (official SuperNI) or unicode (tunelens's)."),
    ] = None,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "cpu",
    device_map: DeviceMapOption = None,
    max_memory: MaxMemoryOption = None,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    no_progress: NoProgress = False,
    wait: WaitOption = False,
    limit: LimitOption = None,
    allow_missing_tasks: AllowMissingOption = False,
    save_adapters: SaveAdaptersOption = False,
    tuning: TuningConfig | None = None,
) -> None:
    """Did tuning teach the task, or only the output format? Zero-shot on held-out tasks."""
    section = _section(
        train=train,
        test=test,
        definitions=comma_list("--definitions", definitions),
        examples=comma_list("--examples", examples),
        instances_per_task=comma_list("--instances-per-task", instances_per_task, int),
        seeds=comma_list("--seeds", seeds, int),
        eval_instances_per_task=eval_instances_per_task,
        eval_encodings=comma_list("--eval-encodings", eval_encodings),
        rouge_tokenizer=rouge_tokenizer,
        tuning=tuning,
    )
    _run(
        "audit",
        section,
        {
            "model": model,
            "dtype": dtype,
            "device": device,
            **_section(device_map=device_map, max_memory=max_memory),
            "seed": seed,
            "limit": limit,
            "allow_missing_tasks": allow_missing_tasks,
            "save_adapters": save_adapters,
        },
        out,
        executor,
        not no_progress,
        address,
        wait,
    )
