"""`tunelens tasks validate/show`: summaries, JSON, and exit 2 with one clear stderr line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SUPERNI_TASK = {
    "Definition": ["Answer yes or no."],
    "Categories": ["Textual Entailment"],
    "Positive Examples": [{"input": "p1", "output": "yes", "explanation": "e"}],
    "Instances": [
        {"id": f"t-{i}", "input": f"[bold]i{i}[/bold]", "output": ["yes" if i % 2 else "no"]}
        for i in range(6)
    ],
}


def tunelens(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tunelens", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def good(tmp_path) -> Path:
    folder = tmp_path / "good"
    write(folder / "task1.json", json.dumps(SUPERNI_TASK))
    write(
        folder / "sub" / "mine.jsonl",
        '{"tunelens_task": 1, "task": "mine", "labels": ["a", "b"]}\n'
        '{"input": "x", "output": "a"}\n{"input": "y", "output": "b"}\n',
    )
    return folder


def test_validate_valid_files(good):
    result = tunelens("tasks", "validate", str(good))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("ok ") for line in lines)
    assert "task1, 6 instances, 2 labels: no, yes" in lines[1]
    assert "mine, 2 instances, 2 labels: a, b" in lines[0]
    assert result.stderr == ""


def test_show_json(good):
    result = tunelens("tasks", "show", str(good / "task1.json"), "--json")
    assert result.returncode == 0, result.stderr
    (shown,) = json.loads(result.stdout)
    assert shown["name"] == "task1" and shown["instances"] == 6
    assert shown["labels"] == ["no", "yes"] and shown["categories"] == ["Textual Entailment"]
    assert shown["prompt"] == (
        "Definition: Answer yes or no.\n\nPositive Example 1 -\nInput: p1\nOutput: yes\n\n"
        "Now complete the following example -\nInput: [bold]i0[/bold]\nOutput:"
    )


def test_show_human_output_escapes_task_text(good):
    result = tunelens("tasks", "show", str(good))
    assert result.returncode == 0, result.stderr
    assert "task1" in result.stdout and "mine" in result.stdout
    assert "[bold]i0[/bold]" in result.stdout  # rendered literally, not as markup
    assert "2 labels: no, yes" in result.stdout


def _bad_cases(tmp_path: Path) -> list[tuple[list[str], str, str]]:
    """(arguments, text the stderr line must contain, place it must name)."""
    task = dict(SUPERNI_TASK)
    nodef = write(
        tmp_path / "nodef.json", json.dumps({k: v for k, v in task.items() if k != "Definition"})
    )
    noout = write(
        tmp_path / "noout.json",
        json.dumps(
            {
                **task,
                "Instances": [
                    {"id": "a", "input": "x", "output": ["y"]},
                    {"id": "b", "input": "x", "output": []},
                ],
            }
        ),
    )
    missing_out = write(tmp_path / "missing_out.jsonl", '{"input": "x"}\n')
    (tmp_path / "emptydir").mkdir()
    split_root = tmp_path / "superni"
    write(split_root / "tasks" / "task1.json", json.dumps(task))
    write(split_root / "splits" / "default" / "test_tasks.txt", "task1\ntask_missing\n")
    return [
        (
            ["tasks", "validate", str(write(tmp_path / "bad.json", '{"Definition": [\n  "x",\n'))],
            "invalid JSON",
            "line 3",
        ),
        (["tasks", "validate", str(nodef)], "no Definition", "'Definition'"),
        (["tasks", "validate", str(noout)], "no output", "Instances[1].output"),
        (["tasks", "validate", str(missing_out)], "no output", "line 1"),
        (
            ["tasks", "validate", str(write(tmp_path / "empty.jsonl", "\n"))],
            "file is empty",
            "empty.jsonl",
        ),
        (["tasks", "validate", str(tmp_path / "emptydir")], "no task files", "emptydir"),
        (
            [
                "tasks",
                "validate",
                str(write(tmp_path / "notobj.jsonl", '{"input": "x", "output": "y"}\n[1, 2]\n')),
            ],
            "JSON object",
            "line 2",
        ),
        (
            [
                "tasks",
                "validate",
                str(
                    write(
                        tmp_path / "nolabels.jsonl",
                        '{"tunelens_task": 1, "labels": []}\n{"input": "x", "output": "y"}\n',
                    )
                ),
            ],
            "label space is empty",
            "line 1",
        ),
        (["tasks", "validate", str(tmp_path / "nothere.json")], "no such file", "nothere.json"),
        (
            ["tasks", "show", str(split_root / "splits" / "default" / "test_tasks.txt")],
            "'task_missing' has no file",
            "test_tasks.txt: line 2",
        ),
        (
            ["tasks", "validate", str(split_root / "splits" / "default" / "test_tasks.txt")],
            "'task_missing' has no file",
            "test_tasks.txt: line 2",
        ),
        (
            ["tasks", "show", str(write(tmp_path / "t.csv", "a,b"))],
            "unknown task file type",
            "t.csv",
        ),
        (["tasks", "show", str(nodef)], "no Definition", "nodef.json"),
    ]


@pytest.mark.slow
def test_every_malformed_input_exits_2_with_one_line(tmp_path):
    for args, message, place in _bad_cases(tmp_path):
        result = tunelens(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (args, result.stderr)
        assert message in lines[0] and place in lines[0], (args, lines[0])
        assert lines[0].startswith("error: ") and "Traceback" not in result.stderr


def test_split_naming_a_missing_task_is_one_clear_line(tmp_path):
    from tunelens.errors import TunelensInputError
    from tunelens.tasks.sets import load_task_set

    root = tmp_path / "superni"
    write(root / "tasks" / "task1.json", json.dumps(SUPERNI_TASK))
    split = write(root / "splits" / "default" / "test_tasks.txt", "task1\ntask_missing\n")
    with pytest.raises(TunelensInputError) as info:
        load_task_set(str(split))
    assert str(info.value) == (
        f"{split}: line 2: task 'task_missing' has no file task_missing.json under {root / 'tasks'}"
    )


def test_split_file_arguments(tmp_path):
    root = tmp_path / "superni"
    write(root / "tasks" / "task1.json", json.dumps(SUPERNI_TASK))
    split = write(root / "splits" / "default" / "test_tasks.txt", "task1\n")
    result = tunelens("tasks", "validate", str(split))
    assert result.returncode == 0, result.stderr
    assert "task1, 6 instances" in result.stdout


def test_validate_reports_each_bad_file_and_keeps_checking(good, tmp_path):
    bad = write(tmp_path / "bad.json", "{")
    result = tunelens("tasks", "validate", str(bad), str(good))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert len(result.stdout.strip().splitlines()) == 2  # the good ones are still summarised


def test_unknown_option_exits_2_with_usage_and_no_traceback():
    result = tunelens("tasks", "show", "--no-such-option")
    assert result.returncode == 2
    assert "No such option" in result.stderr
    assert "Traceback" not in result.stderr
