"""Issue 17: no code from data, no silent success, no random weights, every bad input one line.

The four bad cases of the issue each have a test here that fails on the code
before it: a planted pickle checkpoint ran its payload; Ctrl-C exited 0; a
model directory whose config does not match its weights loaded with random
weights; nonsense specs ran or ended in tracebacks. Then the lock, the I/O
error path, diverged runs and terminal escaping.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.helpers.cli import assert_one_error_line, invoke, tree

from tunelens.errors import TunelensInputError
from tunelens.models.loading import load_model

INTERRUPTED = re.compile(
    r"^interrupted: (\d+) finished cells are kept; re-run the same command to resume$"
)


# --- 1. code execution from a file -------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker``: proof that a pickle ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_checkpoint_is_refused_and_never_run(tmp_path):
    workdir = tmp_path / "wd"
    workdir.mkdir()
    marker = tmp_path / "PWNED"
    torch.save({"model": _Payload(str(marker))}, workdir / "checkpoint.pt")
    result = invoke("world", "train-model", "--workdir", workdir, "--steps", "2")
    line = assert_one_error_line(result)
    assert not marker.exists(), "the pickle payload ran"
    assert str(workdir / "checkpoint.pt") in line and "pickle" in line
    assert tree(workdir) == {"checkpoint.pt"}


@pytest.mark.parametrize("content", [b"", b"garbage" * 20, b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_corrupt_safetensors_checkpoint_is_exit_2(tmp_path, content):
    workdir = tmp_path / "wd"
    workdir.mkdir()
    (workdir / "checkpoint.safetensors").write_bytes(content)
    line = assert_one_error_line(
        invoke("world", "train-model", "--workdir", workdir, "--steps", "2")
    )
    assert "checkpoint.safetensors" in line


def test_checkpoint_is_safetensors_and_json_only(tmp_path):
    from safetensors import safe_open

    from tunelens.models.world_model import WorldModelRecipe, train_world_model

    recipe = WorldModelRecipe(
        hidden_size=16,
        layers=1,
        heads=2,
        intermediate_size=32,
        seq_len=32,
        batch_size=2,
        steps=2,
        curriculum_steps=1,
        warmup=1,
        checkpoint_every=100,
        eval_every=100,
    )
    train_world_model(recipe, tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()
    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as handle:
        meta = json.loads(handle.metadata()["tunelens_checkpoint"])
        assert meta["step"] == 2 and meta["recipe"]["steps"] == 2
        assert "torch_rng" in list(handle.keys())
    # a workdir made with another recipe: one line, no traceback
    line = assert_one_error_line(
        invoke("world", "train-model", "--workdir", tmp_path, "--steps", "3", "--seed", "1")
    )
    assert "another recipe" in line


# --- 2. Ctrl-C reports success -------------------------------------------------------------


def test_sigint_to_a_real_run_exits_130_with_the_interrupted_line(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "world_eval:\n  shots: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]\n"
        "  queries_per_task: 60\n"
    )
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelens", "run", str(spec), "--out", str(out), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    cells = out / "cells" / "world_eval"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if cells.is_dir() and any(cells.glob("*.json")):
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert lines and INTERRUPTED.match(lines[-1]), stderr
    assert "Traceback" not in stderr
    finished = int(INTERRUPTED.match(lines[-1]).group(1))
    assert finished == len(list(cells.glob("*.json"))) >= 1
    assert not (out / "results.json").exists()
    assert not (out / ".lock").exists()  # released on the way out


def test_typer_exit_codes_are_not_dropped():
    # `tasks validate` with a bad file exits 2 via sys.exit; a typer.Exit(3) used to become 0.
    import typer

    from tunelens.cli import app

    @app.command("exit-three", hidden=True)
    def _exit_three() -> None:
        raise typer.Exit(3)

    try:
        assert invoke("exit-three").code == 3
    finally:
        app.registered_commands[:] = [c for c in app.registered_commands if c.name != "exit-three"]


def test_keyboard_interrupt_in_process_is_130_with_the_line(tmp_path, monkeypatch):
    from tunelens.runs import study

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "run_study", interrupted)
    result = invoke("run", "--out", tmp_path / "out")
    assert result.code == 130
    assert INTERRUPTED.match(result.stderr_lines[-1])


# --- 3. random weights measured as if trained ----------------------------------------------


def _saved(tiny_model, directory: Path, arch: str = "llama") -> Path:
    model, tokenizer = tiny_model(arch)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _edit_weights(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    weights = load_file(path)
    edit(weights)
    save_file(weights, str(path), metadata={"format": "pt"})


def _drop_nine(weights):
    for name in sorted(weights)[:9]:
        del weights[name]


CASES = {
    "a layer more in the config": (
        lambda d: _edit_config(d, num_hidden_layers=3),
        "missing",
        "model.layers.2.",
    ),
    "9 tensors missing": (lambda d: _edit_weights(d, _drop_nine), "missing", "lm_head.weight"),
    "an unexpected tensor": (
        lambda d: _edit_weights(d, lambda w: w.update({"extra.bias": torch.zeros(3)})),
        "not part of the model",
        "extra.bias",
    ),
    "a mis-shaped tensor": (
        lambda d: _edit_weights(d, lambda w: w.update({"model.norm.weight": torch.ones(7)})),
        "cannot load the model weights",
        "model.norm.weight",
    ),
    "a config naming another architecture": (
        lambda d: (d / "config.json").write_text(
            json.dumps(
                {
                    "model_type": "gpt2",
                    "n_embd": 32,
                    "n_layer": 2,
                    "n_head": 4,
                    "vocab_size": 40,
                    "n_positions": 64,
                }
            )
        ),
        "weight",
        "tensor",
    ),
    "truncated weights": (
        lambda d: (d / "model.safetensors").write_bytes(
            (d / "model.safetensors").read_bytes()[:300]
        ),
        "safetensors",
        "model.safetensors",
    ),
    "garbage weights": (
        lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 64),
        "safetensors",
        "model.safetensors",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_model_that_does_not_match_its_config_is_refused(tiny_model, tmp_path, case):
    directory = _saved(tiny_model, tmp_path / "m")
    damage, reason, tensor = CASES[case]
    damage(directory)
    with pytest.raises(TunelensInputError) as info:
        load_model(str(directory))
    message = str(info.value)
    assert str(directory) in message and reason in message and tensor in message
    assert "\n" not in message


def test_vocabulary_larger_than_the_embedding_is_refused(tiny_model, tiny_tokenizer, tmp_path):
    model, tokenizer = tiny_model("llama")
    tokenizer.add_tokens([f"extra{i}" for i in range(5)])
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(TunelensInputError, match="tokenizer has .* tokens but"):
        load_model(str(tmp_path))


def test_cli_with_a_broken_model_is_one_line_and_writes_nothing(tiny_model, tmp_path):
    directory = _saved(tiny_model, tmp_path / "m")
    _edit_config(directory, num_hidden_layers=3)
    before = tree(tmp_path)
    line = assert_one_error_line(
        invoke(
            "world", "eval", "--model", directory, "--shots", "0", "--queries", "1", "--no-progress"
        )
    )
    assert str(directory) in line and "model.layers.2." in line
    assert tree(tmp_path) == before


# --- 4. nonsense accepted as a spec ----------------------------------------------------------

SPECS = [
    ("convergence:\n  k: [-1]\n", "convergence.k.0"),
    ("convergence:\n  k: [0]\n", "convergence.k.0"),
    ("convergence:\n  k: [true]\n", "convergence.k.0"),
    ("convergence:\n  k: [500]\n", "convergence.k"),  # larger than every task: after they load
    ("audit:\n  instances_per_task: [-5]\n", "audit.instances_per_task.0"),
    ("audit:\n  instances_per_task: [0]\n", "audit.instances_per_task.0"),
    ("seed: 1e23\n", "seed"),
    ("seed: 1.0e+23\n", "seed"),
    ("seed: 100000000000000000000000\n", "seed"),
    ("seed: -1\n", "seed"),
    ("convergence:\n  seeds: [-3]\n", "convergence.seeds.0"),
    ("audit:\n  tuning:\n    learning_rate: .inf\n", "audit.tuning.learning_rate"),
    ("audit:\n  tuning:\n    learning_rate: .nan\n", "audit.tuning.learning_rate"),
    ("audit:\n  tuning:\n    learning_rate: -1\n", "audit.tuning.learning_rate"),
    ("convergence:\n  definition: [1]\n", "convergence.definition.0"),
    ("convergence:\n  n_pairs: '30'\n", "convergence.n_pairs"),
    ("convergence:\n  k: [2, 2]\n", "convergence.k"),
    ("seed: 1\nseed: 2\n", "lines 1 and 2"),
    ("audit:\n  seeds: [0]\n  seeds: [1]\n", "lines 2 and 3"),
]


@pytest.mark.parametrize("text,where", SPECS)
def test_nonsense_specs_exit_2_naming_file_and_key_before_anything_is_made(tmp_path, text, where):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    result = invoke("run", spec, "--out", tmp_path / "out", "--no-progress")
    line = assert_one_error_line(result)
    assert str(spec) in line and where in line, line
    assert not (tmp_path / "out").exists()


def test_duplicate_keys_in_a_costs_file(tmp_path):
    from tunelens.experiments.decide.costs import load_costs

    path = tmp_path / "costs.yaml"
    path.write_text("spam: {ham: 1}\nham: {spam: 20}\nspam: {ham: 3}\n")
    with pytest.raises(TunelensInputError, match="lines 1 and 3"):
        load_costs(path, ("ham", "spam"))


# --- the lock -------------------------------------------------------------------------------


def test_second_run_on_a_locked_folder_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    from tunelens.runs.lock import RunLock

    out = tmp_path / "out"
    out.mkdir()
    with RunLock(out):
        holder = json.loads((out / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        # another process on this host holds it: refused, with the PID and the way out
        (out / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
        result = invoke("world", "eval", "--shots", "0", "--queries", "1", "--out", out)
        line = assert_one_error_line(result)
        assert f"PID {os.getppid()}" in line and "--wait" in line
    # a dead holder: taken over, and released at the end
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    lock = RunLock(out)
    lock.acquire()
    assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (out / ".lock").exists()


def test_wait_waits_for_the_holder(tmp_path):
    import threading

    from tunelens.runs.lock import RunLock

    tmp_path.joinpath("out").mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    (tmp_path / "out" / ".lock").write_text(
        json.dumps({"pid": sleeper.pid, "host": socket.gethostname()})
    )
    reaper = threading.Thread(target=sleeper.wait)
    reaper.start()
    started = time.monotonic()
    with RunLock(tmp_path / "out", wait=True, poll_seconds=0.1):
        assert time.monotonic() - started >= 1.0
    reaper.join()


# --- one I/O error path ------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_output_folder_is_exit_2_before_a_model_loads(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        line = assert_one_error_line(invoke("world", "eval", "--out", out, "--shots", "0"))
        assert str(out) in line and "not writable" in line
    finally:
        out.chmod(0o700)


def test_unwritable_output_folder_is_exit_2(tmp_path, monkeypatch):
    import tempfile

    real = tempfile.NamedTemporaryFile

    def refuse(*args, **kwargs):
        if str(kwargs.get("prefix", "")).startswith(".probe."):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    line = assert_one_error_line(invoke("world", "eval", "--out", tmp_path / "out", "--shots", "0"))
    assert "not writable: Permission denied" in line


def test_disk_full_while_writing_cells_keeps_finished_cells(tmp_path, monkeypatch):
    from tunelens.runs import store

    out = tmp_path / "out"
    spec = tmp_path / "spec.yaml"
    spec.write_text("world_eval:\n  shots: [0, 1, 2]\n  queries_per_task: 1\n")
    real = store.atomic_write_text
    written: list[Path] = []

    def full_after_one(path, text):
        if "cells" in Path(path).parts:
            if written:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            written.append(Path(path))
        real(path, text)

    monkeypatch.setattr(store, "atomic_write_text", full_after_one)
    line = assert_one_error_line(invoke("run", spec, "--out", out, "--no-progress"))
    assert "No space left on device" in line
    cells = list((out / "cells" / "world_eval").glob("*.json"))
    assert len(cells) == 1 and json.loads(cells[0].read_text())["result"] is not None
    assert not (out / "results.json").exists() and not (out / ".lock").exists()


def test_run_checks_tasks_and_model_before_making_the_folder(tmp_path):
    for text in (
        "convergence:\n  tasks: nowhere/tasks.jsonl\n",
        f"model: {tmp_path / 'no-model'}\nconvergence: {{}}\n",
    ):
        spec = tmp_path / "spec.yaml"
        spec.write_text(text)
        assert_one_error_line(invoke("run", spec, "--out", tmp_path / "out"))
        assert not (tmp_path / "out").exists()


# --- no silent garbage from a diverged run --------------------------------------------------


def test_diverged_tuning_is_exit_2_naming_the_cell(tmp_path):
    result = invoke(
        "convergence",
        "--k",
        "1",
        "--n-pairs",
        "2",
        "--seeds",
        "0",
        "--controls",
        "none",
        "--learning-rate",
        "1e30",
        "--epochs",
        "1",
        "--out",
        tmp_path / "out",
        "--no-progress",
    )
    line = assert_one_error_line(result)
    assert "convergence cell 'world k=1" in line and "diverged" in line
    assert not (tmp_path / "out" / "results.json").exists()


def test_hidden_states_that_are_not_finite_or_zero_are_errors():
    from tunelens.errors import DivergedError
    from tunelens.models.hidden_states import check_states

    good = torch.ones(2, 3, 4)
    assert check_states(good) is good
    for bad_value in (float("nan"), float("inf"), 0.0):
        states = good.clone()
        states[1, 2] = bad_value
        with pytest.raises(DivergedError, match="prompt 1 at layer 2"):
            check_states(states)


# --- safe terminal output, labels -----------------------------------------------------------

ESCAPES = "\x1b[2J\x1b]0;pwned\x07"


def _task_with_escapes(tmp_path: Path) -> Path:
    path = tmp_path / "evil\x1b[31m.jsonl"
    header = {
        "tunelens_task": 1,
        "definition": f"Answer {ESCAPES}.",
        "labels": ["a", "b"],
        "categories": [f"cat{ESCAPES}"],
    }
    rows = [{"input": f"x {ESCAPES} {i}", "output": "ab"[i % 2]} for i in range(4)]
    path.write_text("\n".join(json.dumps(r) for r in [header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("command", [("tasks", "show"), ("tasks", "validate")])
def test_control_characters_are_escaped_in_task_output(tmp_path, command):
    result = invoke(*command, _task_with_escapes(tmp_path))
    assert result.code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "\\x1b" in result.stdout


def test_json_output_stays_json(tmp_path):
    result = invoke("tasks", "show", "--json", _task_with_escapes(tmp_path))
    assert result.code == 0 and "\x1b" not in result.stdout
    assert ESCAPES in json.loads(result.stdout)[0]["definition"]


def test_control_characters_are_escaped_in_examples_list(tmp_path):
    db = tmp_path / "ex.sqlite"
    assert (
        invoke(
            "examples",
            "add",
            "--db",
            db,
            "--input",
            f"in{ESCAPES}",
            "--output",
            "out",
            "--source",
            f"src{ESCAPES}",
        ).code
        == 0
    )
    result = invoke("examples", "list", "--db", db)
    assert result.code == 0 and "\x1b" not in result.stdout and "\\x1b" in result.stdout


def test_error_lines_escape_control_characters(tmp_path):
    bad = tmp_path / "bad\x1b]0;title\x07.jsonl"
    bad.write_text("{not json\n")
    line = assert_one_error_line(invoke("tasks", "validate", bad))
    assert "\x1b" not in line and "\\x1b" in line


@pytest.mark.parametrize("labels", [[""], ["  ", "b"]])
def test_blank_labels_are_refused(tmp_path, labels):
    path = tmp_path / "t.jsonl"
    path.write_text(
        json.dumps({"tunelens_task": 1, "labels": labels}) + '\n{"input": "x", "output": "b"}\n'
    )
    line = assert_one_error_line(invoke("tasks", "validate", path))
    assert "label must not be empty" in line


def test_one_label_space_warns_in_validate(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        json.dumps({"tunelens_task": 1, "labels": ["yes"]}) + '\n{"input": "x", "output": "yes"}\n'
    )
    result = invoke("tasks", "validate", path)
    assert result.code == 0
    assert result.stderr_lines == [
        f"warning: {path}: the label space has one label ('yes'): every answer is that "
        "label, so a guess baseline scores 100"
    ]
