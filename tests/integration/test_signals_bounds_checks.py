"""Issue 32, the process, load-time and bounds half: signals, model checks, bounds, cells.

Every signal that ends a run (SIGINT, SIGTERM, SIGHUP) prints the
``interrupted:`` line, releases ``DIR/.lock`` and exits 128 + signal; chat
templates and tokenizers are checked at load; every numeric option is bounded
before a model loads; a cell file edited to another cell's record is
recomputed; library warnings stay off stderr on success.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.helpers.cli import assert_one_error_line, invoke

INTERRUPTED = re.compile(
    r"^interrupted: (\d+) finished cells are kept; re-run the same command to resume$"
)
SPEC = "world_eval:\n  shots: [0, 1, 2, 3, 4, 5, 6, 7, 8]\n  queries_per_task: 60\n"


# --- signals -----------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_signal_ends_a_run_with_the_line_the_lock_released_and_128_plus_signal(tmp_path, signum):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelens", "run", str(spec), "--out", str(out), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / ".lock").exists():
            break
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert lines and INTERRUPTED.match(lines[-1]), stderr
    assert "Traceback" not in stderr
    kept = int(INTERRUPTED.match(lines[-1]).group(1))
    assert kept == len(list((out / "cells").rglob("*.json")))
    assert not (out / ".lock").exists()
    assert not (out / "results.json").exists()


def test_a_second_signal_while_unwinding_ends_the_process_at_once():
    code = (
        "import os, signal, time\n"
        "from tunelens import interrupt\n"
        "interrupt.install()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
        "except interrupt.Interrupted:\n"
        "    os.kill(os.getpid(), signal.SIGHUP); time.sleep(5)\n"  # cleanup hangs: force
        "print('not reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 129, (done.stdout, done.stderr)
    assert INTERRUPTED.match(done.stderr.strip().splitlines()[-1]) and not done.stdout


def test_interrupted_carries_its_exit_code():
    from tunelens import interrupt

    assert interrupt.exit_code(interrupt.Interrupted(signal.SIGTERM)) == 143
    assert interrupt.exit_code(interrupt.Interrupted(signal.SIGHUP)) == 129
    assert interrupt.exit_code(KeyboardInterrupt()) == 130


# --- cells verified against their record --------------------------------------------------


def test_a_cell_edited_to_another_cells_record_is_recomputed(tmp_path):

    out = tmp_path / "out"
    args = ("world", "eval", "--shots", "0,1", "--queries", "2", "--out", out, "--json")
    first = invoke(*args)
    assert first.code == 0, first.stderr
    files = sorted((out / "cells" / "world_eval").glob("*.json"))
    records = {p: json.loads(p.read_text()) for p in files}
    (victim, original), (_, other) = records.items()
    # The other cell's parameters, seed and digests under this file's name and key.
    forged = {"cell": {**other["cell"], "key": victim.stem}, "result": other["result"]}
    victim.write_text(json.dumps(forged))
    from tunelens.runs.store import _read_record

    assert _read_record(victim) is None  # not accepted as this cell's result
    second = invoke(*args)
    assert second.code == 0, second.stderr
    assert json.loads(victim.read_text())["cell"] == original["cell"]  # computed again
    assert json.loads(second.stdout) == json.loads(first.stdout)


# --- bounds before any model loads ---------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "bound"),
    [
        ("--seed", "-1", "greater than or equal to 0"),
        ("--seed", str(10**23), "less than or equal to 4294967295"),
        ("--bootstrap", "2000000000", "less than or equal to 1000000"),
    ],
)
def test_decide_numbers_out_of_bounds_name_the_option(tmp_path, option, value, bound):
    task = tmp_path / "task.jsonl"
    rows = [{"tunelens_task": 1, "definition": "Animal?", "labels": ["no", "yes"]}]
    rows += [{"input": f"w{i}", "output": "yes" if i % 2 else "no"} for i in range(12)]
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    started = time.monotonic()
    result = invoke("decide", "--task", task, "--model", "world", "--k", "1", option, value)
    line = assert_one_error_line(result)
    assert line.startswith(f"error: {option}: ") and bound in line, line
    assert time.monotonic() - started < 10  # no model loaded, no cell ran
    assert not (tmp_path / "decide-task").exists() and not list(tmp_path.glob("decide-*"))


def test_a_base_seed_that_shifts_default_seeds_past_the_bound_is_refused():
    from tunelens.errors import TunelensInputError
    from tunelens.spec import validate_spec

    with pytest.raises(TunelensInputError, match=r"s\.yaml: seed 4294967295 shifts"):
        validate_spec({"seed": 2**32 - 1, "convergence": {}}, source="s.yaml")
    spec = validate_spec({"seed": 2**32 - 1, "convergence": {"seeds": [7]}}, source="s.yaml")
    assert spec.convergence is not None and spec.convergence.seeds == [7]


# --- model directories checked at load ---------------------------------------------------


def _model_dir(tiny_model, directory: Path, template: str | None = None) -> Path:
    model, tokenizer = tiny_model("llama")
    if template is not None:
        tokenizer.chat_template = template
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


TEMPLATES = {
    "syntax error": ("{% if %}{{ messages }}", "does not render: TemplateSyntaxError"),
    "raise_exception": ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
    "undefined attribute": ("{{ messages[0].nope.deeper }}", "does not render: UndefinedError"),
    "sandbox escape": (
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "does not render: SecurityError",
    ),
    "empty prompt": ("{% for m in messages %}{% endfor %}", "renders an empty prompt"),
    "message dropped": ("<|user|>{{ '\\n' }}<|assistant|>", "drops the user's message"),
}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_a_broken_chat_template_is_refused_at_load_naming_the_directory(tiny_model, tmp_path, name):
    from tunelens.errors import TunelensInputError
    from tunelens.models.loading import load_model

    template, reason = TEMPLATES[name]
    directory = _model_dir(tiny_model, tmp_path / "m", template)
    with pytest.raises(TunelensInputError) as caught:
        load_model(str(directory))
    line = str(caught.value)
    assert line.startswith(str(directory)) and reason in line and "\n" not in line, line


def test_a_chat_template_that_never_ends_is_refused(tiny_model, tmp_path, monkeypatch):
    from tunelens.errors import TunelensInputError
    from tunelens.models import checks
    from tunelens.models.loading import load_model

    monkeypatch.setattr(checks, "RENDER_SECONDS", 0.5)
    loops = "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}"
    directory = _model_dir(tiny_model, tmp_path / "m", loops)
    started = time.monotonic()
    with pytest.raises(TunelensInputError, match="TimeoutError: rendering took longer than 0.5"):
        load_model(str(directory))
    assert time.monotonic() - started < 30


def test_a_working_chat_template_loads(tiny_model, tmp_path):
    from tunelens.models.loading import load_model

    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"
    directory = _model_dir(tiny_model, tmp_path / "m", template)
    assert load_model(str(directory)).tokenizer.chat_template == template


def test_a_token_id_beyond_the_embedding_table_is_refused(tiny_model, tmp_path):
    from tunelens.errors import TunelensInputError
    from tunelens.models.loading import load_model

    directory = _model_dir(tiny_model, tmp_path / "m")
    path = directory / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    vocab["tree"] = len(vocab) + 40  # as many tokens as rows, one id past the table
    path.write_text(json.dumps(data))
    with pytest.raises(TunelensInputError, match=r"token 'tree' has id \d+ but the model's emb"):
        load_model(str(directory))


def test_a_model_directory_that_is_a_symlink_loop_is_one_line(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    task = tmp_path / "task.jsonl"
    rows = [{"tunelens_task": 1, "definition": "Animal?", "labels": ["no", "yes"]}]
    rows += [{"input": f"w{i}", "output": "yes" if i % 2 else "no"} for i in range(12)]
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for args in (
        ["decide", "--task", task, "--model", loop, "--k", "1", "--out", tmp_path / "o"],
        ["world", "eval", "--model", loop, "--shots", "0", "--queries", "1"],
    ):
        line = assert_one_error_line(invoke(*args))
        assert f"{loop}: " in line and "symlink loop" in line, line
    assert not (tmp_path / "o").exists()


def test_cli_with_a_broken_chat_template_is_one_line(tiny_model, tmp_path):
    directory = _model_dir(tiny_model, tmp_path / "m", "{{ raise_exception('boom') }}")
    result = invoke(
        "world", "eval", "--model", directory, "--shots", "0", "--queries", "1", "--no-progress"
    )
    line = assert_one_error_line(result)
    assert str(directory) in line and "chat template does not render" in line, line


# --- library warnings: silent on success, shown with -v ------------------------------------


def test_library_warnings_stay_off_stderr_and_show_with_verbose(tmp_path):
    import warnings

    task = tmp_path / "task.jsonl"
    rows = [{"tunelens_task": 1, "definition": "Animal?", "labels": ["no", "yes"]}]
    rows += [{"input": f"w{i}", "output": "yes" if i % 2 else "no"} for i in range(12)]
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    # 4 test items: the bootstrap is degenerate (scipy's DegenerateDataWarning, numpy's
    # RuntimeWarning), the case that used to leak.
    args = ["decide", "--task", str(task), "--model", "world", "--k", "1", "--out", str(out)]
    args += ["--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run(
        [sys.executable, "-m", "tunelens", *args], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "warn" not in done.stderr.lower(), done.stderr
    # The same run again with -v (its cells are kept, the intervals recomputed): shown.
    with warnings.catch_warnings(record=True) as caught:
        result = invoke("-v", *args)
    assert result.code == 0, result.stderr
    assert any(issubclass(w.category, RuntimeWarning) for w in caught), caught
