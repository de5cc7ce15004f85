"""Study specs: the pydantic model of a YAML spec, whose sections the experiments bring.

A spec holds the study's common settings (model, dtype, device, seed, ...) and
one section per experiment it runs, under the experiment's name. Each
registered experiment (:mod:`tunelens.api.registry`) with a ``section_model``
contributes its section; a key that is neither a common setting nor a
registered section is an error, so a typo never silently falls back to a
default. The experiment's ``fill_section`` fills in what a section inherits
(model, dtype, device, seeds shifted by the base seed). ``tasks`` fields take a
path (a Super-NaturalInstructions file or directory, a split file, a JSONL task)
or one of the embedded sets ``world:train`` / ``world:heldout``.
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
    MAX_SEED,
    Count,
    Seed,
)
from tunelens.errors import TunelensInputError
from tunelens.models.tuning.config import TuningConfig


class StrictModel(BaseModel):
    """A spec section: unknown keys are errors, values frozen, no NaN or infinity."""

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


def _layer_list(layers: list[int]) -> list[int]:
    if any(not 0 <= layer <= MAX_COUNT for layer in layers):
        raise ValueError(f"layers must lie in 0 .. {MAX_COUNT}")
    return sorted(set(layers))


LayerList = Annotated[list[int], AfterValidator(_layer_list)]
"""Layers to read or patch (0 = embeddings, L = after block L): sorted, each once."""


TuningSpec = TuningConfig
"""How a model is tuned: the library's one tuning configuration (``tunelens.models.tuning``).

Its defaults are the library's; a study changes one for itself only here (the
audit's ``tuning`` default below). The seed comes from the study's seeds.
"""


class Spec(BaseModel):
    """A whole study: the common settings, and one section per experiment it runs.

    Sections are stored as pydantic extras under their experiment's name
    (``spec.convergence`` reads one; :meth:`section` and :meth:`sections` ask by
    name); every registered experiment with a section model has its key, None
    when the spec leaves it out.
    """

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

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

    @model_validator(mode="wrap")
    @classmethod
    def _sections(cls, data: Any, handler: Any) -> Spec:
        """Validate each experiment's section with its own model (errors keep their key
        path), refuse unknown keys, then let each experiment fill its section in."""
        if not isinstance(data, dict):
            return handler(data)
        models = section_models()
        rest = {key: value for key, value in data.items() if key in cls.model_fields}
        errors: list[dict[str, Any]] = []
        sections: dict[str, Any] = {}
        for key, value in data.items():
            if key in cls.model_fields:
                continue
            if key not in models:
                errors.append({"type": "extra_forbidden", "loc": (key,), "input": value})
                continue
            sections[key], found = _validate_section(key, models[key], value)
            errors.extend(found)
        try:
            spec = handler(rest)
        except ValidationError as error:
            errors = [_line_error(e, ()) for e in error.errors()] + errors
            spec = None
        if errors or spec is None:
            raise ValidationError.from_exception_data(cls.__name__, errors)  # type: ignore[arg-type]
        return spec._with_sections(sections)

    def _with_sections(self, sections: dict[str, Any]) -> Spec:
        """This spec holding ``sections`` (every registered one: None where absent), each
        filled in by its experiment."""
        from tunelens.api import get_experiments

        experiments = get_experiments()
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        for name in section_models():
            section = sections.get(name)
            extra[name] = None if section is None else experiments[name].fill_section(section, self)
        return self

    @model_validator(mode="after")
    def _placement_pair(self) -> Spec:
        if self.max_memory is not None and self.device_map is None:
            raise ValueError("max_memory needs a device_map (e.g. device_map: auto)")
        return self

    def model_list(self) -> list[str]:
        """The model factor: ``models``, else ``[model]``."""
        return list(self.models) or [self.model]

    def section(self, name: str) -> Any:
        """The section of experiment ``name`` (None: the spec has none)."""
        return (self.__pydantic_extra__ or {}).get(name)

    def sections(self) -> dict[str, Any]:
        """Experiment name -> section, for the sections this spec has, in run order."""
        return {k: v for k, v in (self.__pydantic_extra__ or {}).items() if v is not None}


def section_models() -> dict[str, type[BaseModel]]:
    """Experiment name -> its spec section's model, for each registered experiment with one."""
    from tunelens.api import get_experiments

    return {
        name: experiment.section_model
        for name, experiment in get_experiments().items()
        if experiment.section_model is not None
    }


def _line_error(error: Any, prefix: tuple[Any, ...]) -> dict[str, Any]:
    """One of pydantic's errors as a line of a new ValidationError, its key path under
    ``prefix``."""
    line = {"type": error["type"], "loc": (*prefix, *error["loc"]), "input": error.get("input")}
    if "ctx" in error:
        line["ctx"] = error["ctx"]
    return line


def _validate_section(
    name: str, model: type[BaseModel], value: Any
) -> tuple[Any, list[dict[str, Any]]]:
    """(the section, its errors): a section object is taken as it is, anything else
    validated strictly by the section's model."""
    if value is None or isinstance(value, model):
        return value, []
    try:
        return model.model_validate(value, strict=True), []
    except ValidationError as error:
        return None, [_line_error(e, (name,)) for e in error.errors()]


def shifted_seeds(base: int, seeds: list[int]) -> list[int]:
    """A section's default seeds shifted by the base seed, each still a seed."""
    shifted = [base + s for s in seeds]
    if max(shifted) > MAX_SEED:
        raise ValueError(
            f"seed {base} shifts a section's default seeds to {max(shifted)}, beyond "
            f"2**32 - 1; lower it or list the section's seeds"
        )
    return shifted


def study_defaults(section: Any, study: Any) -> dict[str, object]:
    """What a section with ``models``, ``dtype``, ``device`` and ``seeds`` inherits from the
    study: the study's dtype and device where it names none, the study's model(s) where it
    lists none, and its default seeds shifted by the study's base seed (one rule for every
    experiment, so a study reads the same way whichever sections it has)."""
    update: dict[str, object] = {
        key: getattr(study, key) for key in ("dtype", "device") if getattr(section, key) is None
    }
    if not section.models:
        update["models"] = study.model_list()
    if "seeds" not in section.model_fields_set:
        update["seeds"] = shifted_seeds(study.seed, section.seeds)
    return update


DEFAULT_SPEC = Path(__file__).parent / "assets" / "default_spec.yaml"


def default_spec() -> Spec:
    """The embedded default (``assets/default_spec.yaml``): both studies on the world model,
    sized for 2 CPU cores. Written as a spec file, so the engine names no experiment."""
    from tunelens.io import parse_yaml, read_text

    data = parse_yaml(read_text(DEFAULT_SPEC, what="spec"), source=DEFAULT_SPEC)
    return validate_spec(data, source=str(DEFAULT_SPEC))


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
    """``("section", "sizes", 0, "constrained-int")`` -> ``section.sizes.0``.

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
