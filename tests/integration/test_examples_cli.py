"""`tunelens examples add|list|export` end to end, and a store that survives `kill -9` mid-add."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tunelens.examples.store import ExampleStore, NewExample, digest
from tunelens.tasks.jsonl import load_jsonl

ENV = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
BEFORE = NewExample("added before the kill", "yes")
AFTER = NewExample("added after the kill", "yes")


def tunelens(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunelens", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=300,
    )


def test_add_list_export_round_trip(tmp_path):
    ok = tunelens(
        "examples",
        "add",
        "--input",
        "A joy from start to finish.",
        "--output",
        "positive",
        "--label",
        "positive",
        "--source",
        "review-ui",
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    assert "added 1 example (#1)" in ok.stdout
    assert (tmp_path / "tunelens_examples.sqlite").is_file()  # the default --db
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        '{"input": "Dull, long and loud.", "output": "negative"}\n'
        '{"input": "Call me on +44 20 7946 0958", "output": "positive"}\n'
        '{"input": "Never again.", "output": "negative", "accepted": false}\n'
    )
    bulk = tunelens("examples", "add", "--from", str(rows), cwd=tmp_path)
    assert bulk.returncode == 0, bulk.stderr
    assert "added 3 examples (#2-#4)" in bulk.stdout
    assert "flagged #3: likely personal data (phone)" in bulk.stderr

    listed = tunelens("examples", "list", "--json", cwd=tmp_path)
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["id"], r["accepted"], r["pii"]) for r in records] == [
        (1, True, []),
        (2, True, []),
        (3, True, ["phone"]),
        (4, False, []),
    ]
    assert records[1]["source"] == "rows.jsonl"
    table = tunelens("examples", "list", "--flagged", cwd=tmp_path)
    assert table.returncode == 0 and "+44 20 7946 0958" in table.stdout
    assert "A joy" not in table.stdout

    out = tmp_path / "tuning.jsonl"
    exported = tunelens(
        "examples",
        "export",
        "--out",
        str(out),
        "--task",
        "reviews",
        "--definition",
        "Is the review positive or negative?",
        cwd=tmp_path,
    )
    assert exported.returncode == 0, exported.stderr
    assert "exported 2 examples" in exported.stdout
    assert "left out 1 example(s) flagged" in exported.stderr
    task = load_jsonl(out)
    assert task.name == "reviews" and [i.id for i in task.instances] == ["ex1", "ex2"]
    with_flagged = tunelens(
        "examples", "export", "--out", str(out), "--include-flagged", cwd=tmp_path
    )
    assert with_flagged.returncode == 0
    assert [i.id for i in load_jsonl(out).instances] == ["ex1", "ex2", "ex3"]
    valid = tunelens("tasks", "validate", str(out), cwd=tmp_path)
    assert valid.returncode == 0, valid.stderr


def main_in_process(args: list[str], cwd: Path, capsys, monkeypatch) -> tuple[int, str]:
    """Exit status and stderr of ``tunelens ARGS`` through the CLI's own entry point."""
    from tunelens.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["tunelens", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_bad_input_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    first = tunelens("examples", "add", "--input", "x", "--output", "y", cwd=tmp_path)
    assert first.returncode == 0
    # one refusal through a real process ...
    dup = tunelens("examples", "add", "--input", "x", "--output", "y", cwd=tmp_path)
    assert dup.returncode == 2
    lines = dup.stderr.strip().splitlines()
    assert len(lines) == 1 and "duplicate of example #1" in lines[0], dup.stderr
    # ... and the others through the same entry point in this process
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "fine", "output": "ok"}\n{"input": "no output"}\n')
    dup_file = tmp_path / "dup.jsonl"
    dup_file.write_text('{"input": "new", "output": "row"}\n{"input": "x", "output": "y"}\n')
    junk = tmp_path / "junk.sqlite"
    junk.write_text("definitely not sqlite " * 20)
    cases = [
        (["examples", "add", "--from", str(bad)], f"{bad}: line 2: field 'output': missing"),
        (
            ["examples", "add", "--from", str(dup_file)],
            f"{dup_file}: line 2: duplicate of example #1",
        ),
        (["examples", "add", "--input", "only input"], "give --input and --output"),
        (["examples", "add", "--input", "a", "--output", "b", "--time", "noon"], "ISO 8601"),
        (["examples", "list", "--db", str(junk)], "not a tunelens examples database"),
        (
            ["examples", "export", "--out", "x.jsonl", "--db", "absent.sqlite"],
            "no examples database",
        ),
    ]
    for args, message in cases:
        code, err = main_in_process(args, tmp_path, capsys, monkeypatch)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    # nothing of the refused adds landed; --skip-duplicates adds the rest
    with ExampleStore(tmp_path / "tunelens_examples.sqlite") as store:
        assert store.count() == 1
    code, err = main_in_process(
        ["examples", "add", "--from", str(dup_file), "--skip-duplicates"],
        tmp_path,
        capsys,
        monkeypatch,
    )
    assert code == 0 and "skipped line 2: duplicate of example #1" in err


def check_consistent(db: Path) -> list[tuple]:
    """integrity_check ok, and every row complete and self-consistent."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute(
            "SELECT id, input, output, label, source, created_at, accepted, pii, "
            "digest FROM examples ORDER BY id"
        ).fetchall()
    for id_, input_text, output, label, source, created, accepted, pii, key in rows:
        assert input_text and output and created and accepted in (0, 1), id_
        assert isinstance(source, str) and isinstance(pii, str), id_
        assert key == digest(input_text, output, label), id_
    return rows


def wait_for(condition, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False


def test_kill_during_a_bulk_add_leaves_all_or_nothing(tmp_path):
    db = tmp_path / "ex.sqlite"
    with ExampleStore(db) as store:
        store.add([BEFORE])
    n = 60_000
    big = tmp_path / "big.jsonl"
    big.write_text(
        "".join(
            json.dumps(
                {"input": f"example number {i} " + "word " * 20, "output": "yes" if i % 2 else "no"}
            )
            + "\n"
            for i in range(n)
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunelens", "examples", "add", "--from", str(big), "--db", str(db)],
        env=ENV,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = Path(f"{db}-journal")
    saw_journal = wait_for(lambda: journal.exists() or proc.poll() is not None)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert saw_journal
    rows = check_consistent(db)
    print(f"rows after the kill: {len(rows)}")
    assert len(rows) in (1, n + 1)  # the transaction landed whole or not at all
    with ExampleStore(db) as store:  # the store is usable afterwards
        assert store.count() == len(rows)
        store.add([AFTER])


def test_kill_during_a_stream_of_adds_keeps_every_committed_row(tmp_path):
    db = tmp_path / "ex.sqlite"
    script = (
        "import sys\n"
        "from tunelens.examples.store import ExampleStore, NewExample\n"
        "store = ExampleStore(sys.argv[1])\n"
        "i = 0\n"
        "while True:\n"
        "    store.add([NewExample(f'row {i} mail{i}@example.com', 'yes', label='y')])\n"
        "    i += 1\n"
        "    if i % 20 == 0:\n"
        "        print(i, flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(db)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    for line in proc.stdout:
        if int(line) >= 100:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    rows = check_consistent(db)
    assert len(rows) >= 100
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))  # no gap, no half row
    assert all(r[7] == "email" for r in rows)
    with ExampleStore(db) as store:
        store.add([AFTER])
        assert store.count() == len(rows) + 1
