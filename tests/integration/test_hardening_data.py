"""Issue 32, data safety and input validation: nothing destroys a store or a run directory,
label spaces are checked under the metric's normalisation, exports are safe for spreadsheets,
a key given twice in any JSON input is an error.

The four bad cases of the issue each have a test here that fails on the code before it:
``examples export --out`` onto its own store replaced the store; labels that normalise to one
text were accepted; formula-like cells were exported verbatim; a JSON costs file with a key
given twice kept the last. Then the smaller cases: full disk, locked store, header rows,
personal-data shapes, unknown-token labels, contradictory and shared inputs.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import sqlite3
from pathlib import Path

import pytest
from tests.helpers.cli import assert_one_error_line, invoke

from tunelens.errors import TunelensInputError

# --- helpers ----------------------------------------------------------------------------------


def _store(tmp_path: Path) -> Path:
    """A store with an accepted, a rejected and a flagged row (what an export leaves out)."""
    db = tmp_path / "ex.sqlite"
    rows = [
        {"input": "good film", "output": "positive", "label": "pos"},
        {"input": "bad film", "output": "negative", "accepted": False},
        {"input": "mail me at a@b.io", "output": "positive"},
    ]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert invoke("examples", "add", "--db", db, "--from", src).code == 0
    return db


def _rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT * FROM examples ORDER BY id").fetchall()


def _full_disk(monkeypatch) -> None:
    """Every fsync of a regular file fails with ENOSPC: a write that cannot land."""
    import stat

    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _no_temp_files(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert left == [], left


# --- 1. nothing destroys a store or a run directory -------------------------------------------


@pytest.mark.parametrize("how", ["same", "dot-slash", "symlink", "hardlink"])
def test_examples_export_onto_its_own_store_is_refused(tmp_path, how):
    db = _store(tmp_path)
    before = _rows(db)
    out = {
        "same": db,
        "dot-slash": Path(os.path.relpath(db, tmp_path)),
        "symlink": tmp_path / "link.jsonl",
        "hardlink": tmp_path / "hard.jsonl",
    }[how]
    if how == "symlink":
        out.symlink_to(db)
    if how == "hardlink":
        os.link(db, out)
    result = invoke("examples", "export", "--db", db, "--out", out, cwd=tmp_path)
    line = assert_one_error_line(result)
    assert "destroy the input" in line and str(out) in line
    assert _rows(db) == before  # rejected and flagged rows, sources and times all kept
    assert invoke("examples", "list", "--db", db).code == 0


def test_tidy_export_onto_the_results_it_reads_is_refused(tmp_path):
    run = _study_run(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "audit.csv").symlink_to(run / "results.json")
    before = (run / "results.json").read_bytes()
    line = assert_one_error_line(invoke("export", run, "--out", tmp_path / "out"))
    assert "destroy the input" in line and "audit.csv" in line
    assert (run / "results.json").read_bytes() == before
    line = assert_one_error_line(invoke("export", run, "--out", run / "results.json"))
    assert "destroy the input" in line


def _superni_task(path: Path, outputs: list[str], name: str = "t") -> Path:
    instances = [
        {"id": f"{name}-{i}", "input": f"item {i} {o}", "output": [o]}
        for i, o in enumerate(outputs * 4)
    ]
    path.write_text(
        json.dumps({"Definition": ["Answer."], "Instances": instances, "Positive Examples": []})
    )
    return path


def test_decide_refuses_an_output_that_is_its_task_or_costs_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    task = _superni_task(out / "decide.json", ["spam", "ham"])
    before = task.read_bytes()
    line = assert_one_error_line(invoke("decide", "--task", task, "--model", "world", "--out", out))
    assert "destroy the input" in line and str(task) in line
    assert task.read_bytes() == before
    task2 = _superni_task(tmp_path / "t.json", ["spam", "ham"])
    costs = out / "decide.html"
    costs.write_text("true,predicted,cost\nspam,ham,1\nham,spam,1\n")
    (tmp_path / "costs.csv").symlink_to(costs)
    line = assert_one_error_line(
        invoke(
            "decide", "--task", task2, "--model", "world", "--out", out,
            "--costs", tmp_path / "costs.csv",
        )
    )  # fmt: skip
    assert "destroy the input" in line


def test_examples_export_full_disk_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch):
    db = _store(tmp_path)
    out = tmp_path / "set.jsonl"
    out.write_text("previous export\n")
    _full_disk(monkeypatch)
    line = assert_one_error_line(invoke("examples", "export", "--db", db, "--out", out))
    assert line == f"error: {out}: cannot write: No space left on device"
    assert out.read_text() == "previous export\n"
    _no_temp_files(tmp_path)


def test_examples_export_to_a_folder_or_read_only_place_names_the_users_path(tmp_path, monkeypatch):
    import tempfile

    db = _store(tmp_path)
    folder = tmp_path / "folder"
    folder.mkdir()
    line = assert_one_error_line(invoke("examples", "export", "--db", db, "--out", folder))
    assert line == f"error: {folder}: cannot write: is a directory"
    _no_temp_files(tmp_path)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            out = ro / "set.jsonl"
            line = assert_one_error_line(invoke("examples", "export", "--db", db, "--out", out))
            assert line == f"error: {out}: cannot write: Permission denied"
        finally:
            ro.chmod(0o700)

    def refuse(*args, **kwargs):  # a read-only mount, as root sees one too
        raise PermissionError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = tmp_path / "mnt" / "set.jsonl"
    line = assert_one_error_line(invoke("examples", "export", "--db", db, "--out", out))
    assert line == f"error: {out}: cannot write: Read-only file system"


def _study_run(tmp_path: Path, edit=None) -> Path:
    from tests.helpers.fakes import fake_experiments, small_spec

    from tunelens.runs.study import run_study

    run = tmp_path / "run"
    run_study(small_spec(), run, progress=False, experiments=fake_experiments())
    if edit is not None:
        path = run / "results.json"
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return run


def test_tidy_export_is_atomic_and_leaves_no_temp_file(tmp_path, monkeypatch):
    run = _study_run(tmp_path)
    assert invoke("export", run).code == 0
    table = run / "export" / "audit.csv"
    before = table.read_bytes()
    _full_disk(monkeypatch)
    line = assert_one_error_line(invoke("export", run))
    assert "No space left on device" in line and str(run / "export") in line
    assert table.read_bytes() == before
    _no_temp_files(run)
    monkeypatch.undo()
    (run / "export" / "audit.csv").unlink()
    (run / "export" / "audit.csv").mkdir()
    line = assert_one_error_line(invoke("export", run))
    assert line == f"error: {run / 'export' / 'audit.csv'}: cannot write: is a directory"
    _no_temp_files(run)


def test_atomic_write_all_is_both_or_neither(tmp_path, monkeypatch):
    from tunelens import io as tio

    html, data = tmp_path / "decide.html", tmp_path / "decide.json"
    html.write_text("old page")
    data.write_text("old json")
    real = tio._fill

    def fill(temp, content, path):
        if path == data:
            raise tio.write_error(OSError(errno.ENOSPC, "No space left on device"), path)
        real(temp, content, path)

    monkeypatch.setattr(tio, "_fill", fill)
    with pytest.raises(TunelensInputError, match="decide.json: cannot write: No space"):
        tio.atomic_write_all({html: "new page", data: "new json"})
    assert (html.read_text(), data.read_text()) == ("old page", "old json")
    _no_temp_files(tmp_path)


def test_decide_on_a_full_disk_leaves_neither_result_file(tmp_path, monkeypatch):
    from tunelens.tasks.jsonl import write_jsonl
    from tunelens.tasks.world.generator import generate_world

    task = write_jsonl(generate_world(0).heldout[0], tmp_path / "task.jsonl")
    out = tmp_path / "out"
    args = ["decide", "--task", task, "--model", "world", "--out", out, "--k", "1"]
    args += ["--tune-sizes", "8", "--no-controls", "--test-size", "8", "--demo-size", "1"]
    args += ["--bootstrap", "100", "--similarity-items", "2", "--epochs", "1", "--no-progress"]
    assert invoke(*args).code == 0
    (out / "decide.json").unlink()
    (out / "decide.html").unlink()
    cells = sorted(p.name for p in (out / "cells").rglob("*.json"))
    from tunelens import io as tio

    real = tio._fill

    def fill(temp, content, path):  # the disk fills up at the last file
        if path.name == "decide.json":
            raise tio.write_error(OSError(errno.ENOSPC, "No space left on device"), path)
        real(temp, content, path)

    monkeypatch.setattr(tio, "_fill", fill)
    line = assert_one_error_line(invoke(*args))
    assert line == f"error: {out / 'decide.json'}: cannot write: No space left on device"
    assert not (out / "decide.json").exists() and not (out / "decide.html").exists()
    assert sorted(p.name for p in (out / "cells").rglob("*.json")) == cells
    _no_temp_files(out)


def test_examples_add_on_a_full_disk_says_so_and_adds_nothing(tmp_path, monkeypatch):
    from tunelens.examples.store import ExampleStore

    db = _store(tmp_path)
    before = _rows(db)
    real = ExampleStore._prepare

    def full(self):
        real(self)
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        self._conn.execute(f"PRAGMA max_page_count = {pages}")

    monkeypatch.setattr(ExampleStore, "_prepare", full)
    src = tmp_path / "big.jsonl"
    src.write_text(
        "".join(json.dumps({"input": f"{i} " * 400, "output": "x"}) + "\n" for i in range(50))
    )
    line = assert_one_error_line(invoke("examples", "add", "--db", db, "--from", src))
    assert line == f"error: {db}: cannot write: no space left on device (the database is unchanged)"
    assert "rollback" not in line
    assert _rows(db) == before


def test_a_store_locked_by_another_process_says_it_is_locked(tmp_path, monkeypatch):
    from tunelens.examples import store

    db = _store(tmp_path)
    monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for args in (
            ("list",),
            ("add", "--input", "x", "--output", "y"),
            ("export", "--out", tmp_path / "o.jsonl"),
        ):
            line = assert_one_error_line(invoke("examples", *args, "--db", db))
            assert "locked by another process" in line and str(db) in line, line
            assert "not a tunelens examples database" not in line
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_header_rows_of_a_from_file_are_counted_not_silently_skipped(tmp_path):
    src = tmp_path / "rows.jsonl"
    lines = [
        {"tunelens_task": 1, "task": "t", "definition": "d"},
        {"input": "a film", "output": "positive"},
        {"definition": "looks like a header", "output": "x"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = invoke("examples", "add", "--db", tmp_path / "ex.sqlite", "--from", src)
    assert result.code == 0, result.stderr
    assert "(3 rows: 1 added, 2 skipped as task headers (lines 1, 3))" in result.stdout
    only = tmp_path / "only.jsonl"
    only.write_text(json.dumps(lines[0]) + "\n")
    line = assert_one_error_line(
        invoke("examples", "add", "--db", tmp_path / "e.sqlite", "--from", only)
    )
    assert "no examples (1 task header row(s) only)" in line


def test_contradictory_outputs_in_the_store_warn(tmp_path):
    db = tmp_path / "ex.sqlite"
    assert (
        invoke("examples", "add", "--db", db, "--input", "a film", "--output", "positive").code == 0
    )
    result = invoke("examples", "add", "--db", db, "--input", "a film", "--output", "negative")
    assert result.code == 0
    assert result.stderr_lines == [
        "warning: #2 has the same input as accepted example #1 but another output: a tuned "
        "model learns both"
    ]


@pytest.mark.parametrize(
    "text,flag",
    [
        ("card 4111.1111.1111.1111", "card"),
        ("pay to DE89 3704 0044 0532 0130 00 today", "iban"),
        ("GB82WEST12345698765432", "iban"),
        ("write to john.doe\uff20example.com", "email"),
        ("john [at] example [dot] com", "email"),
        ("john (at) example (dot) com", "email"),
        ("\uff14\uff11\uff11\uff11 1111 1111 1111", "card"),  # full-width digits
    ],
)
def test_personal_data_in_other_shapes_is_flagged(text, flag):
    from tunelens.examples.pii import pii_flags

    assert flag in pii_flags(text)


@pytest.mark.parametrize(
    "text", ["look at the (dot) pattern", "version 1.2.3.4", "DE00 1234 5678 9012 3456 78"]
)
def test_personal_data_lookalikes_are_not_flagged(text):
    from tunelens.examples.pii import pii_flags

    assert pii_flags(text) == ()


# --- 2. label spaces under the metric's normalisation -----------------------------------------


def _jsonl_task(path: Path, labels: list[str], outputs: list[str] | None = None) -> Path:
    outputs = outputs or labels
    rows = [{"tunelens_task": 1, "task": "tiny", "definition": "Answer.", "labels": labels}]
    rows += [{"input": f"item {i}", "output": o} for i, o in enumerate(outputs * 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _decide(task: Path, out: Path, *extra) -> list:
    """A small decide that would run to the end (a few seconds) if nothing refused it."""
    args = ["decide", "--task", task, "--model", "world", "--out", out, "--k", "1"]
    args += ["--tune-sizes", "2", "--no-controls", "--test-size", "0.5", "--demo-size", "1"]
    args += ["--bootstrap", "100", "--epochs", "1", "--limit", "2", "--no-progress", *extra]
    return args


@pytest.mark.parametrize(
    "labels,pair",
    [
        (["Yes", "yes"], ("Yes", "yes")),
        (["YES", "yes", "no"], ("YES", "yes")),
        (["yes", "yes ", " yes"], ("yes", "yes ")),
        (["yes", "yes.", "no"], ("yes", "yes.")),
    ],
)
def test_decide_refuses_labels_that_normalise_alike(tmp_path, labels, pair):
    task = _jsonl_task(tmp_path / "t.jsonl", labels)
    result = invoke(*_decide(task, tmp_path / "out"))
    line = assert_one_error_line(result)
    assert str(task) in line and "task 'tiny'" in line
    assert repr(pair[0]) in line and repr(pair[1]) in line
    assert not (tmp_path / "out").exists()


def test_labels_derived_from_outputs_spell_one_answer_one_way(tmp_path):
    """Outputs the metric reads as one answer are one derived label (the data's spelling
    variants, as real SuperNI tasks have them), spelled as most outputs spell it."""
    from tunelens.tasks.loaders import load_task_file

    outputs = ["yes", "Yes", "yes", "yes.", "no", "No", "no"]  # "yes" and "no" most often
    task = _superni_task(tmp_path / "t.json", outputs)
    assert invoke("tasks", "validate", task).code == 0
    assert load_task_file(task).labels == ("no", "yes")


@pytest.mark.parametrize("reserved", ["(other)", " (OTHER) "])
def test_a_label_named_like_the_out_of_space_bucket_is_refused(tmp_path, reserved):
    task = _jsonl_task(tmp_path / "t.jsonl", [reserved, "yes", "no"])
    line = assert_one_error_line(invoke(*_decide(task, tmp_path / "out")))
    assert "reserved" in line and repr(reserved) in line


def test_a_label_that_normalises_to_nothing_is_refused_by_decide(tmp_path):
    task = _jsonl_task(tmp_path / "t.jsonl", ["+", "yes"])
    line = assert_one_error_line(invoke(*_decide(task, tmp_path / "out")))
    assert "'+'" in line and "empty" in line


def test_tied_label_scores_are_no_answer_and_unknown_tokens_warn(capsys):
    import numpy as np
    from transformers import AutoTokenizer

    from tunelens.experiments.decide.methods import TIED, best_label, warn_unknown_tokens
    from tunelens.experiments.decide.metrics import to_label
    from tunelens.models.paths import world_model_dir

    labels = ["\U0001f600", "\U0001f642", "iron"]
    assert best_label(np.array([-1.0, -1.0, -5.0]), labels) == TIED
    assert best_label(np.array([-1.0, -2.0, -5.0]), labels) == labels[0]
    assert to_label(TIED, labels) == "(other)"
    if not (world_model_dir() / "tokenizer.json").is_file():
        pytest.skip("the embedded world model is not installed")

    class Loaded:
        tokenizer = AutoTokenizer.from_pretrained(world_model_dir())

    warn_unknown_tokens(Loaded(), labels)
    warn_unknown_tokens(Loaded(), labels)  # once
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "tokenise to the unknown token '[UNK]'" in err[0]
    assert "'\U0001f600', '\U0001f642'" in err[0] and "tie" in err[0]


def test_contradictory_outputs_and_shared_test_inputs_warn(tmp_path, capsys):
    from tunelens.experiments.decide.inputs import contradictions
    from tunelens.experiments.decide.split import Split, shared_inputs
    from tunelens.tasks.types import Instance, Task

    a, b, c = Instance("1", "x", ("yes",)), Instance("2", "x", ("no",)), Instance("3", "y", ("no",))
    task = Task("t", "d", (a, b, c), labels=("no", "yes"))
    assert contradictions(task) == [
        "instances '1', '2' have the same input and different outputs: no method can answer "
        "all of them"
    ]
    split = Split(test=(a,), demo_pool=(c,), tuning_pool=(b,), seed=0)
    (line,) = shared_inputs(split)
    assert line.startswith("1 test input(s) are also in the tuning pool ('x')")


# --- 3. exports are safe for spreadsheets ----------------------------------------------------

HOSTILE = [
    '=HYPERLINK("http://evil.example","x")',
    "+SUM(1,2)",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+9)",
    "\tTAB",
    "\rCR",
]


def _hostile_results(data: dict) -> None:
    entry = data["audit"][0]
    scores = list(entry["per_task"].values())
    entry["per_task"] = {name: scores[0] for name in HOSTILE}
    entry["per_task"]["neg"] = {**scores[0], "em": -0.5}
    entry["per_category"] = {"=1+1": next(iter(entry["per_category"].values()))}


def test_csv_export_neutralises_formulas_and_keeps_numbers(tmp_path):
    run = _study_run(tmp_path, _hostile_results)
    assert invoke("export", run).code == 0
    text = (run / "export" / "audit.csv").read_bytes().decode("utf-8")  # "\r" kept as written
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    names = {r["name"] for r in rows if r["level"] == "task"}
    assert {"'" + h for h in HOSTILE} <= names
    assert "'=1+1" in {r["name"] for r in rows if r["level"] == "category"}
    for row in rows:
        for value in row.values():
            if value[:1] in ("=", "+", "-", "@", "\t", "\r"):
                float(value)  # only numbers may start so
    neg = next(r for r in rows if r["name"] == "neg" and r["metric"] == "em")
    assert neg["value"] == "-0.5"  # a number, not neutralised
    pytest.importorskip("pyarrow")
    pd = pytest.importorskip("pandas")
    assert invoke("export", run, "--format", "parquet").code == 0
    table = pd.read_parquet(run / "export" / "audit.parquet")
    assert set(HOSTILE) <= set(table["name"])  # parquet keeps raw values


def test_spreadsheet_safe_rule():
    from tunelens.report.tidy import spreadsheet_safe

    assert spreadsheet_safe("=1") == "'=1"
    assert spreadsheet_safe("-x") == "'-x"
    assert spreadsheet_safe("-1.5") == "-1.5" and spreadsheet_safe("+2e3") == "+2e3"
    assert spreadsheet_safe(-0.5) == -0.5 and spreadsheet_safe("plain") == "plain"


# --- 4. a key given twice in any JSON input ---------------------------------------------------


def test_duplicate_keys_in_a_json_costs_file_are_refused(tmp_path):
    task = _jsonl_task(tmp_path / "t.jsonl", ["yes", "no"])
    costs = tmp_path / "costs.json"
    costs.write_text('{"yes": {"no": 1}, "no": {"yes": 2}, "yes": {"no": 1000}}')
    line = assert_one_error_line(invoke(*_decide(task, tmp_path / "out", "--costs", costs)))
    assert str(costs) in line and "key 'yes' is given twice" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name,text",
    [
        ("t.json", '{"Definition": ["d"], "Definition": ["e"], "Instances": []}'),
        (
            "t.jsonl",
            '{"tunelens_task": 1, "task": "a", "task": "b"}\n{"input": "x", "output": "y"}\n',
        ),
        ("r.jsonl", '{"input": "x", "output": "y", "output": "z"}\n'),
    ],
)
def test_duplicate_keys_in_task_files_and_rows_are_refused(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    command = (
        ("examples", "add", "--db", tmp_path / "e.sqlite", "--from")
        if name == "r.jsonl"
        else ("tasks", "validate")
    )
    line = assert_one_error_line(invoke(*command, path))
    assert str(path) in line and "is given twice" in line


def test_duplicate_keys_in_a_json_spec_are_refused(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text('{"seed": 1, "seed": 2}')
    line = assert_one_error_line(invoke("run", spec, "--out", tmp_path / "out"))
    assert str(spec) in line and "given twice" in line


def test_every_world_task_passes_the_label_space_check():
    from tunelens.tasks.labels import check_label_space
    from tunelens.tasks.world.generator import generate_world
    from tunelens.tasks.world.relabel import relabel_tasks

    world = generate_world(0)
    for task in [*world.train, *world.heldout, *relabel_tasks(list(world.heldout), "novel")]:
        check_label_space(task.labels, source="world", task=task.name)
