"""``DIR/manifest.json``: how a run directory was made (beside results, which stay byte-stable).

Written by every invocation of the shared cell loop (``run``, the study
commands, ``decide``, ``world eval --out``): the command line, start time,
tunelens version and code revision, package versions, the experiments and
their code versions, the effective batch size of each tuning section, and
which results file the directory holds. After the cells ran, ``batch_sizes``
adds the batch sizes that an accelerator out of memory made this process fall
back to (:mod:`tunelens.models.memory`; absent when nothing was reduced or
recorded).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import tunelens
from tunelens.runs.store import atomic_write_text, dumps

__all__ = ["MANIFEST", "effective_batch_sizes", "record_batch_sizes", "write_manifest"]

MANIFEST = "manifest.json"
_PACKAGES = ("torch", "transformers", "peft", "accelerate", "numpy", "scipy", "ray")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def code_revision() -> str | None:
    """The git commit of the tunelens source tree, when it is a checkout (else None)."""
    source = Path(tunelens.__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def effective_batch_sizes(sections: Sequence[tuple[Any, Any]]) -> dict[str, int]:
    """Examples per optimizer step of each section that tunes (batch x accumulation).

    Cells run single-process on their rank (tunelens.runs.ranks), so the launch's
    world size does not multiply it.
    """
    sizes: dict[str, int] = {}
    for experiment, section in sections:
        tuning = getattr(section, "tuning", None)
        if tuning is None:
            config = getattr(section, "config", None)  # decide keeps its tuning in its config
            tuning = getattr(config, "tuning", None)
        batch = getattr(tuning, "batch_size", None)
        if isinstance(batch, int):
            sizes[experiment.name] = batch * int(getattr(tuning, "gradient_accumulation_steps", 1))
    return sizes


def write_manifest(
    out_dir: Path,
    experiments: Sequence[Any],
    *,
    results_file: str | None = None,
    sections: Sequence[tuple[Any, Any]] = (),
) -> None:
    """Record this invocation in ``out_dir/manifest.json`` (replacing the previous one)."""
    from tunelens.models.memory import used_batch_sizes

    used_batch_sizes(reset=True)  # this invocation's batches only
    manifest = {
        "command": list(sys.argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tunelens_version": tunelens.__version__,
        "code_revision": code_revision(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "experiments": {e.name: e.code_version for e in experiments},
        "effective_batch_size": effective_batch_sizes(sections),
        "results": results_file,
    }
    atomic_write_text(Path(out_dir) / MANIFEST, dumps(manifest, indent=2) + "\n")


def record_batch_sizes(out_dir: Path) -> None:
    """Add the batch sizes this process ran (:func:`tunelens.models.memory.used_batch_sizes`)
    to ``out_dir/manifest.json``: each site's requested size and the sizes that fit."""
    import json

    from tunelens.models.memory import used_batch_sizes

    used = used_batch_sizes()
    path = Path(out_dir) / MANIFEST
    if not used or not path.is_file():
        return
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["batch_sizes"] = used
    atomic_write_text(path, dumps(manifest, indent=2) + "\n")
