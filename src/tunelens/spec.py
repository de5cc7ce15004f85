"""Experiment specs: pydantic models of a YAML spec; every default lives here.

A spec has a ``convergence`` section (question 1), an ``audit`` section
(question 2), or both. Unknown keys are errors (``extra="forbid"``), so a typo
never silently falls back to a default. ``tasks`` fields take a path (a
Super-NaturalInstructions file or directory, a split file, a JSONL task) or one
of the embedded sets ``world:train`` / ``world:heldout``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tunelens.bounds import (
    MAX_COUNT,
    MAX_LORA_RANK,
    MAX_NEW_TOKENS,
    MAX_SEED,
    Count,
    NonNegative,
    Resamples,
    Seed,
)
from tunelens.errors import TunelensInputError
from tunelens.models.tuning.config import StudyTuning, TuningConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Positive = Count
"""A count: 1 .. 2**31 - 1 (:mod:`tunelens.bounds`)."""
_T = TypeVar("_T")


def _distinct(values: list[_T]) -> list[_T]:
    """A sweep lists each value once (two equal values would be one cell twice)."""
    seen: list[_T] = []
    for value in values:
        if value in seen:
            raise ValueError(f"{value!r} is listed twice")
        seen.append(value)
    return values


Sweep = Annotated[list[_T], Field(min_length=1), AfterValidator(_distinct)]
"""A swept factor: at least one value, each value once."""


TuningSpec = TuningConfig
"""How a model is tuned: the library's one tuning configuration (``tunelens.models.tuning``).

Its defaults are the library's; a study changes one for itself only here (the
audit's ``tuning`` default below). The seed comes from the study's seeds.
"""


class ConvergenceSpec(_Strict):
    """Question 1: ICL vs IT hidden states. Every list is a sweep (one condition per value)."""

    tasks: str = Field("world:heldout", description="Tasks the demonstrations come from.")
    models: list[str] = Field(
        [], description="Models to sweep; empty means the spec's top-level model."
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Weights dtype; empty means the spec's."
    )
    device: str | None = Field(None, description="torch device; empty means the spec's.")
    n_pairs: int = Field(
        30, ge=2, le=MAX_COUNT, description="(demonstration set, anchor) pairs per seed."
    )
    anchors_per_set: Count = Field(1, description="Anchors probed per tuned set.")
    seeds: Sweep[Seed] = Field([0, 1, 2], description="Resampling seeds.")
    k: Sweep[Positive] = Field(
        [8],
        description="Demonstrations per set (>= 1; at most what the tasks hold, checked once "
        "they load).",
    )
    flip_fraction: Sweep[float] = Field([0.0], description="Share of demonstrations mislabelled.")
    relevance: Sweep[Literal["same", "other"]] = Field(
        ["same"], description="Demonstrations from the same task or another task."
    )
    definition: Sweep[bool] = Field([False], description="Task definition in ICL/anchor prompts.")
    controls: Sweep[Literal["none", "random_init", "shuffled"]] = Field(
        ["none", "random_init"],
        description="'none' is the real pipeline; the others are "
        "controls: a randomly initialised model, and shuffled-token demonstrations.",
    )
    template: Literal["plain", "tk", "chat"] = Field("plain", description="Prompt template.")
    tuning: StudyTuning = Field(TuningSpec(), description="How each demonstration set is tuned.")
    tuning_methods: list[Literal["lora", "full"]] = Field(
        [],
        description="Tuning methods to sweep (lora, full); empty means tuning.method only.",
    )
    lora_ranks: list[int] = Field(
        [], description="LoRA ranks to sweep; empty means tuning.lora_r only."
    )
    target_module_sets: list[list[str]] = Field(
        [],
        description="LoRA target module sets to sweep, e.g. [[q_proj, v_proj], [all-linear]]; "
        "empty means tuning.target_modules only.",
    )
    patching: bool | None = Field(
        None,
        description="Activation patching (the causal test): patch the ICL and IT states into "
        "the zero-shot forward at each layer. Empty means on for the embedded world model, "
        "off for other models.",
    )
    patching_layers: list[int] = Field(
        [], description="Layers to patch (0 = embeddings); empty means every layer."
    )

    @field_validator("lora_ranks")
    @classmethod
    def _ranks(cls, v: list[int]) -> list[int]:
        if any(not 1 <= r <= MAX_LORA_RANK for r in v):
            raise ValueError(f"LoRA ranks must lie in 1 .. {MAX_LORA_RANK}")
        return v

    @field_validator("patching_layers")
    @classmethod
    def _layers(cls, v: list[int]) -> list[int]:
        if any(not 0 <= layer <= MAX_COUNT for layer in v):
            raise ValueError(f"layers must lie in 0 .. {MAX_COUNT}")
        return sorted(set(v))

    @field_validator("target_module_sets")
    @classmethod
    def _module_sets(cls, v: list[list[str]]) -> list[list[str]]:
        if any(not modules for modules in v):
            raise ValueError("a target module set needs at least one module name")
        return v

    def tuning_variants(self) -> list[TuningSpec]:
        """The tuning configurations swept: methods x ranks x target sets (LoRA-only factors
        do not multiply full fine-tuning), each the ``tuning`` section with those values."""
        variants: list[TuningSpec] = []
        for method in self.tuning_methods or [self.tuning.method]:
            if method == "full":
                combos: list[dict[str, object]] = [{"method": "full"}]
            else:
                combos = [
                    {"method": "lora", "lora_r": r, "target_modules": list(modules)}
                    for r in self.lora_ranks or [self.tuning.lora_r]
                    for modules in self.target_module_sets or [self.tuning.target_modules]
                ]
            for combo in combos:
                variant = self.tuning.model_copy(update=combo)
                if variant not in variants:
                    variants.append(variant)
        return variants

    @field_validator("flip_fraction")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= x <= 1.0 for x in v):
            raise ValueError("fractions must lie in [0, 1]")
        return v


class AuditSpec(_Strict):
    """Question 2: multi-task tuning grid, zero-shot on held-out tasks."""

    model: str | None = Field(None, description="Model to tune; empty means the spec's.")
    models: list[str] = Field(
        [],
        description="Several models: one whole audit per model (results key audit_by_model; "
        "the top-level audit keys are the first model's). Empty means [model].",
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Weights dtype; empty means the spec's."
    )
    device: str | None = Field(None, description="torch device; empty means the spec's.")
    train: str = Field("world:train", description="Training tasks.")
    test: str = Field("world:heldout", description="Held-out evaluation tasks.")
    definitions: Sweep[Literal["original", "simplified", "none"]] = Field(
        ["original", "simplified", "none"], description="Definition variant while tuning."
    )
    examples: Sweep[Literal["original", "delusive", "none"]] = Field(
        ["original", "delusive", "none"], description="Positive-example variant while tuning."
    )
    instances_per_task: Sweep[Positive | Literal["full"]] = Field(
        [5], description="Training instances per task (>= 1): low (5), mid, or 'full'."
    )
    seeds: Sweep[Seed] = Field([0], description="Tuning seeds.")
    n_positive: NonNegative = Field(2, description="Positive examples in the Tk-Instruct encoding.")
    eval_instances_per_task: Count = Field(
        100,
        description="Held-out instances scored per task, the first ones of each (Tk-Instruct: "
        "100). On world tasks 100 means every instance, so twin tasks share their inputs and "
        "the definition-blind bound is exactly 50%.",
    )
    eval_encodings: Sweep[Literal["definition_only", "definition_examples"]] = Field(
        ["definition_only", "definition_examples"],
        description="How held-out prompts are encoded for the untuned baseline and every "
        "tuned condition: 'definition_only' (truly zero-shot) or 'definition_examples' "
        "(Tk-Instruct's: definition + n_positive positive examples). The first leads the "
        "report and the baselines key.",
    )
    rouge_tokenizer: Literal["default", "unicode"] = Field(
        "default",
        description="ROUGE-L tokenizer: 'default' is the official SuperNI scorer "
        "(rouge_score's, ASCII only); 'unicode' is tunelens's own for non-English text.",
    )
    max_new_tokens: int = Field(
        8, ge=1, le=MAX_NEW_TOKENS, description="Bound on generated tokens."
    )
    bootstrap: Resamples = Field(
        2000, description="Bootstrap resamples for CIs over tasks (100 .. 10**6)."
    )
    tuning: StudyTuning = Field(
        TuningSpec(learning_rate=3e-3, epochs=2, batch_size=16),
        description="How the model is tuned on the training mixture (the audit's own "
        "learning rate, epochs and batch size).",
    )

    def audited_models(self) -> list[str]:
        """The models audited: ``models``, else ``[model]``."""
        return list(self.models) or [str(self.model)]

    @field_validator("tuning", mode="before")
    @classmethod
    def _audit_tuning_defaults(cls, value: object) -> object:
        """A partial ``tuning`` mapping keeps the audit's own defaults for the keys it omits."""
        if isinstance(value, dict):
            default = cls.model_fields["tuning"].default
            return {**default.model_dump(), **value}
        return value


DEFAULT_SHOTS: tuple[int, ...] = (0, 1, 2, 4, 8, 16)


class WorldEvalSpec(_Strict):
    """Few-shot accuracy of a model on world tasks (``tunelens world eval``), one cell per k."""

    model: str = Field("world", description="'world' or a local Hugging Face model directory.")
    tasks: str = Field("world:heldout", description="Tasks to evaluate.")
    shots: Sweep[NonNegative] = Field(list(DEFAULT_SHOTS), description="Values of k (>= 0).")
    queries_per_task: Count = Field(20, description="Queries per task and k.")
    labels: Literal["original", "novel"] = Field(
        "original",
        description="'novel' swaps each task's label words for words never used as labels in "
        "the world models' training (tunelens.tasks.world.relabel).",
    )
    definition: bool = Field(
        False, description="Put the task definition before the demonstrations (k = 0: only it)."
    )
    seed: Seed = Field(0, description="Seed of the demonstration draws.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights.")
    device: str = Field("cpu", description="torch device.")


class Spec(_Strict):
    """A whole study."""

    model: str = Field(
        "world",
        description="'world', 'world-small', 'world-it' (the embedded family) or a local "
        "Hugging Face model directory.",
    )
    models: list[str] = Field(
        [],
        description="A model factor: every study runs on each of these models (convergence "
        "models, audit models) unless its section lists its own. Empty means [model].",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights.")
    device: str = Field("cpu", description="torch device.")
    device_map: str | None = Field(
        None,
        description="A model bigger than one device: 'auto' (or balanced, sequential, a JSON "
        "object of module -> device) loads it through Accelerate's big-model dispatch over the "
        "GPUs, the CPU and disk. Placement, like the hardware, is not part of a cell's key.",
    )
    max_memory: str | None = Field(
        None,
        description="With device_map: the most each device may hold, e.g. 0=20GiB,cpu=64GiB "
        "or a JSON object; layers past it are offloaded (CPU, then disk).",
    )
    seed: Seed = Field(
        0,
        description="Base seed (0 .. 2**32 - 1): a section that lists no seeds of its own "
        "draws with its default seeds shifted by it (convergence seed, seed+1, seed+2; audit "
        "seed; world_eval seed). Seeds a section lists are used as given.",
    )
    limit: int | None = Field(
        None,
        ge=1,
        le=MAX_COUNT,
        description="A quick look (--limit N): at most N anchors / evaluation instances per "
        "task (tunelens.runs.limit); cell keys and results.json record it. Empty: no limit.",
    )
    allow_missing_tasks: bool = Field(
        False,
        description="Skip the tasks a split file names that have no file (partial copies of "
        "the benchmark) instead of stopping (--allow-missing-tasks).",
    )
    save_adapters: bool = Field(
        False,
        description="Keep the tuned adapters of the cells this run computes under "
        "DIR/adapters/<cell key>/ (--save-adapters); never changes a result or a cell key.",
    )
    convergence: ConvergenceSpec | None = None
    audit: AuditSpec | None = None
    world_eval: WorldEvalSpec | None = None
    note: str = Field("", description="Free text shown in the report.")

    @field_validator("device_map", "max_memory")
    @classmethod
    def _placement(cls, value: str | None, info: Any) -> str | None:
        """Read now, so that a bad device map fails before any model loads."""
        from tunelens.models.loading import parse_device_map, parse_max_memory

        if value is not None:
            parse = parse_device_map if info.field_name == "device_map" else parse_max_memory
            try:
                parse(value)
            except TunelensInputError as error:
                raise ValueError(error.message) from None
        return value

    def placement(self) -> dict[str, str]:
        """``load_model``'s placement keywords for every cell (none by default)."""
        chosen = {"device_map": self.device_map, "max_memory": self.max_memory}
        return {key: value for key, value in chosen.items() if value is not None}

    @model_validator(mode="after")
    def _fill_sections(self) -> Spec:
        """Sections inherit model, dtype and device, so each cell's key names its model, and
        the base seed shifts the default seeds of sections that list none."""
        if self.max_memory is not None and self.device_map is None:
            raise ValueError("max_memory needs a device_map (e.g. device_map: auto)")
        common = {"dtype": self.dtype, "device": self.device}
        models = list(self.models) or [self.model]
        if self.convergence is not None:
            c = self.convergence
            update: dict[str, object] = {k: v for k, v in common.items() if getattr(c, k) is None}
            if not c.models:
                update["models"] = models
            if "seeds" not in c.model_fields_set:
                update["seeds"] = _shifted(self.seed, c.seeds)
            object.__setattr__(self, "convergence", c.model_copy(update=update))
        if self.audit is not None:
            a = self.audit
            update = {k: v for k, v in common.items() if getattr(a, k) is None}
            if not a.models:
                update["models"] = [a.model] if a.model is not None else models
            chosen = update.get("models", a.models)
            update["model"] = chosen[0]  # type: ignore[index]
            if "seeds" not in a.model_fields_set:
                update["seeds"] = _shifted(self.seed, a.seeds)
            object.__setattr__(self, "audit", a.model_copy(update=update))
        if self.world_eval is not None and "seed" not in self.world_eval.model_fields_set:
            w = self.world_eval
            object.__setattr__(
                self, "world_eval", w.model_copy(update={"seed": _shifted(self.seed, [w.seed])[0]})
            )
        return self


def _shifted(base: int, seeds: list[int]) -> list[int]:
    """A section's default seeds shifted by the base seed, each still a seed."""
    shifted = [base + s for s in seeds]
    if max(shifted) > MAX_SEED:
        raise ValueError(
            f"seed {base} shifts a section's default seeds to {max(shifted)}, beyond "
            f"2**32 - 1; lower it or list the section's seeds"
        )
    return shifted


def default_spec() -> Spec:
    """The embedded default: both studies on the world model, sized for 2 CPU cores."""
    return Spec(
        convergence=ConvergenceSpec(),
        # World labels are one token: 4 new tokens bound a prediction without waiting on
        # rows that never stop (a batch decodes until its last row ends).
        audit=AuditSpec(max_new_tokens=4),
        note="Embedded default: both studies on the world model and world tasks, at each "
        "study's own default sizes (convergence: k 8, 30 pairs x 3 seeds, random-init control; "
        "audit: the low-resource grid, 5 instances per task, one seed, definition-only and "
        "definition + 2 examples evaluation); a few minutes on 2 CPU cores.",
    )


#: Specs are a few kilobytes; a larger file is a wrong path (a weights file, a dump).
MAX_SPEC_BYTES = 4 * 2**20


def load_spec(path: Path) -> Spec:
    """Parse and validate a YAML spec; errors name the file and the key path.

    Read through :mod:`tunelens.io` (size cap, UTF-8, one located error) and
    parsed strictly: a key given twice is an error naming both lines, and
    values are not coerced (``k: [true]`` or ``seed: 1e23`` are errors, not 1).
    """
    from tunelens.io import parse_yaml, read_text

    if not Path(path).exists():
        raise TunelensInputError("no such spec file", source=str(path))
    text = read_text(path, what="spec", max_bytes=MAX_SPEC_BYTES)
    data = parse_yaml(text, source=path)
    if not isinstance(data, dict):
        raise TunelensInputError("a spec must be a mapping of keys", source=str(path))
    return validate_spec(data, source=str(path))


def validate_spec(data: dict, *, source: str) -> Spec:
    """A Spec from plain data; the first error names ``source`` and the key path.

    Strict: no value is coerced to another type (a boolean is no integer, a
    float no seed, a string no number).
    """
    try:
        return Spec.model_validate(data, strict=True)
    except ValidationError as error:
        first = error.errors()[0]
        where = dotted_key(first["loc"]) or None
        raise TunelensInputError(_message(first), source=source, where=where) from None


def dotted_key(loc: tuple) -> str:
    """``("audit", "instances_per_task", 0, "constrained-int")`` -> ``audit.instances_per_task.0``.

    pydantic adds the tags of union members and validators to the location;
    only field names and list indices are the user's key.
    """
    return ".".join(
        str(p) for p in loc if isinstance(p, int) or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p)
    )


def _message(error: Any) -> str:
    """pydantic's message, with the offending value when it is short."""
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, (bool, int, float, str)) and len(repr(value)) <= 40:
        return f"{message} (got {value!r})"
    return message
