"""Where a model lives: one of the embedded world models or a local Hugging Face directory.

Torch-free, so that fingerprinting and planning do not import torch.
"""

from __future__ import annotations

from pathlib import Path

import tunelens
from tunelens.errors import TunelensInputError
from tunelens.models.checks import check_model_path

__all__ = [
    "INSTALL_FOLDERS",
    "WORLD",
    "WORLD_MODELS",
    "is_world_model",
    "resolve_model_path",
    "world_model_dir",
]

WORLD = "world"
# The embedded family: model name -> the directory under tunelens/assets/ that
# `tunelens world train-model --install` writes. `world` is the 6-layer second
# generation (`--size base`), `world-small` the first 3-layer model, `world-it`
# is `world` after multi-task instruction tuning, `world-base` the base member that saw no
# definition -> answer text and no zero-shot answer format in pretraining (issue 29).
# Candidate base members, installable but not shipped, so not loadable by name
# (bench/world_base.md says how far each got); `world-base`, the base member of issue 29,
# ships since 0.3. Each trains with `--size <its name>` and installs to its name in
# snake case.
CANDIDATES: tuple[str, ...] = (
    "world-base-induct",
    "world-base-early",
    "world-base-sandwich",
    "world-base-rules",
    "world-base-deep",
    "world-base-focus",
)
UNSHIPPED: frozenset[str] = frozenset(CANDIDATES)
INSTALL_FOLDERS: dict[str, str] = {
    "world": "world",
    "world-small": "world_small",
    "world-it": "world_it",
    "world-base": "world_base",
    **{name: name.replace("-", "_") for name in CANDIDATES},
}
# Model name -> the directory it loads from (the same folders: each member ships).
WORLD_MODELS: dict[str, str] = {k: v for k, v in INSTALL_FOLDERS.items() if k not in UNSHIPPED}
# How `tunelens world train-model` rebuilds each (see commands/world.py).
TRAIN_COMMANDS: dict[str, str] = {
    "world": "tunelens world train-model --size base --install",
    "world-small": "tunelens world train-model --size small --install",
    "world-it": "tunelens world train-model --size base --instruction-tune --install",
    "world-base": "tunelens world train-model --size world-base --install",
    **{name: f"tunelens world train-model --size {name} --install" for name in CANDIDATES},
}


def is_world_model(name: str) -> bool:
    """Whether ``name`` names one of the embedded world models (not a directory)."""
    return name in WORLD_MODELS


def world_model_dir(name: str = WORLD, *, install: bool = False) -> Path:
    """The directory an embedded world model loads from (``install``: is installed into)."""
    folders = INSTALL_FOLDERS if install else WORLD_MODELS
    if name not in folders:
        raise TunelensInputError(
            f"not an embedded world model (one of {', '.join(folders)}), got {name!r}"
        )
    folder = folders[name]
    return Path(tunelens.__file__).parent / "assets" / folder


def resolve_model_path(name_or_path: str) -> Path:
    """A world model name -> its embedded directory; anything else is a local directory path."""
    if is_world_model(name_or_path):
        directory = world_model_dir(name_or_path)
        if not (directory / "config.json").is_file():
            raise TunelensInputError(
                f"the embedded model {name_or_path!r} is not installed; train it with "
                f"`{TRAIN_COMMANDS[name_or_path]}` or give a local model directory",
                source=str(directory),
            )
        return directory
    directory = Path(name_or_path).expanduser()
    check_model_path(directory)  # a symlink loop would read as "does not exist"
    if not directory.exists():
        names = ", ".join(f"'{name}'" for name in WORLD_MODELS)
        raise TunelensInputError(
            f"model directory does not exist (tunelens never downloads; give one of {names} "
            "or a local Hugging Face model directory)",
            source=str(directory),
        )
    if not directory.is_dir():
        raise TunelensInputError(
            "not a directory; a model is a Hugging Face model directory", source=str(directory)
        )
    if not (directory / "config.json").is_file():
        raise TunelensInputError(
            "no config.json; not a Hugging Face model directory", source=str(directory)
        )
    return directory
