"""The user's wait, this tree against an older one: the same command, interleaved, in fresh runs.

    python bench/versus.py OLD_SRC [--repeats 2] [--what run|decide] [--new-model world-small]
                           [--new-spec OLD_DEFAULT.yaml]

OLD_SRC is the ``src`` directory of another checkout (``git archive <commit> src |
tar -x -C /tmp/old``); it is put first on PYTHONPATH, so both versions run in this
environment. Each round runs old then new (then new then old), each into a fresh
output directory, and records wall time and the children's CPU time
(``resource.getrusage``). Prints one line per run, the load, and the medians.

``--new-model`` names the model this tree runs where the older tree runs its
``world``: an older tree whose ``world`` is the first-generation model (before
issue 15) is compared like for like with ``--new-model world-small`` (the same
weights; this tree's default study then runs from a copy of its default spec
with that model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def decide_task(scratch: Path) -> Path:
    """The held-out world task of the decide tests (56 one-word inputs, 4 labels), as JSONL."""
    from tunelens.tasks.jsonl import write_jsonl
    from tunelens.tasks.world.generator import generate_world

    return write_jsonl(generate_world(0).heldout[0], scratch / "world_task.jsonl")


def command(
    what: str, out: Path, task: Path | None = None, model: str = "world", spec: Path | None = None
) -> list[str]:
    """The command a user runs: the default study, or decide on a held-out world task."""
    if what == "run":
        where = [str(spec)] if spec is not None else []
        return [sys.executable, "-m", "tunelens", "run", *where, "--out", str(out), "--no-progress"]
    return [
        sys.executable,
        "-m",
        "tunelens",
        "decide",
        "--task",
        str(task),
        "--model",
        model,
        "--out",
        str(out),
        "--no-progress",
    ]


def default_spec_with(model: str, scratch: Path) -> Path:
    """This tree's default spec with another model (the rest of it unchanged)."""
    import yaml

    from tunelens.spec import default_spec

    data = default_spec().model_dump(mode="json")
    data["model"] = model
    for section in data.values():  # the dump fills each section's own model list in too
        if isinstance(section, dict) and "models" in section:
            section["models"] = [model]
    path = scratch / f"default-{model}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def timed(
    src: Path | None,
    what: str,
    scratch: Path,
    label: str,
    task: Path | None,
    model: str = "world",
    spec: Path | None = None,
) -> dict[str, float]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    out = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=scratch))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        command(what, out / "run", task, model, spec), env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{label} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"{label:>4}: wall {wall:7.1f} s  cpu {cpu:7.1f} s  load {os.getloadavg()[0]:.2f}")
    return {"wall": wall, "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old_src", type=Path, help="the src/ directory of the older checkout")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--what", choices=["run", "decide"], default="run")
    parser.add_argument(
        "--new-model", default="world", help="the model this tree runs (the older one: world)"
    )
    parser.add_argument(
        "--new-spec",
        type=Path,
        default=None,
        help="a spec this tree runs instead of its default (the older tree's default written "
        "out, for a like-for-like comparison after the default changed)",
    )
    args = parser.parse_args()
    print(f"load at start {os.getloadavg()}; {args.what}, {args.repeats} rounds")
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="tunelens-versus-") as scratch:
        task = decide_task(Path(scratch)) if args.what == "decide" else None
        spec = (
            default_spec_with(args.new_model, Path(scratch))
            if args.what == "run" and args.new_model != "world"
            else args.new_spec
        )
        for r in range(args.repeats):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for label in order:
                if label == "old":
                    runs[label].append(timed(args.old_src, args.what, Path(scratch), label, task))
                else:
                    runs[label].append(
                        timed(None, args.what, Path(scratch), label, task, args.new_model, spec)
                    )
    summary = {
        label: {k: statistics.median(r[k] for r in rows) for k in ("wall", "cpu")}
        for label, rows in runs.items()
    }
    summary["speedup_wall"] = summary["old"]["wall"] / summary["new"]["wall"]  # type: ignore[assignment]
    summary["speedup_cpu"] = summary["old"]["cpu"] / summary["new"]["cpu"]  # type: ignore[assignment]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
