"""Where a model lives: the embedded world model or a local Hugging Face directory.

Torch-free, so that fingerprinting and planning do not import torch.
"""

from __future__ import annotations

from pathlib import Path

import tunelens
from tunelens.errors import TunelensInputError

__all__ = ["WORLD", "resolve_model_path", "world_model_dir"]

WORLD = "world"


def world_model_dir() -> Path:
    """The directory of the embedded world model inside the installed package."""
    return Path(tunelens.__file__).parent / "assets" / "world_model"


def resolve_model_path(name_or_path: str) -> Path:
    """``"world"`` -> the embedded model; anything else is a local directory path."""
    if name_or_path == WORLD:
        directory = world_model_dir()
        if not (directory / "config.json").is_file():
            raise TunelensInputError(
                "the embedded world model is not installed; train it with "
                "`tunelens world train-model --install` or give a local model directory",
                source=str(directory),
            )
        return directory
    directory = Path(name_or_path).expanduser()
    if not directory.exists():
        raise TunelensInputError(
            "model directory does not exist (tunelens never downloads; give 'world' or a "
            "local Hugging Face model directory)",
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
