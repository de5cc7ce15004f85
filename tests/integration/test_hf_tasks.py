"""SuperNI as Hugging Face copies hold it: a save_to_disk directory, parquet and JSONL shards.

Made in the test from the shared SuperNI subset's task JSON; every form must load
to the same tasks, instance counts and label spaces as the JSON files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunelens.errors import TunelensInputError
from tunelens.tasks.loaders import find_task_files, load_tasks
from tunelens.tasks.sets import load_task_set

SUPERNI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "superni"
needs_superni = pytest.mark.skipif(
    not (SUPERNI / "tasks").is_dir(),
    reason=f"the shared SuperNI subset is not at {SUPERNI} (../shared/data/superni)",
)


def superni_rows(root: Path) -> list[dict]:
    """One row per instance, in the columns of the public HF copies (plus optional ones)."""
    rows = []
    for file in find_task_files(root):
        data = json.loads(file.read_text(encoding="utf-8"))
        for inst in data["Instances"]:
            rows.append(
                {
                    "task_name": file.stem,
                    "id": inst["id"],
                    "definition": " ".join(data["Definition"]),
                    "inputs": inst["input"],
                    "targets": inst["output"],
                    "positives": data.get("Positive Examples") or [],
                    "negatives": data.get("Negative Examples") or [],
                    "categories": data.get("Categories") or [],
                }
            )
    return rows


def signature(tasks):
    return sorted(
        (t.name, len(t.instances), t.labels, t.definition, len(t.positive_examples), t.categories)
        for t in tasks
    )


@needs_superni
def test_datasets_parquet_and_jsonl_copies_load_like_the_json_files(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the optional 'datasets' package")
    reference = load_tasks([SUPERNI / "tasks"])
    rows = superni_rows(SUPERNI / "tasks")
    table = datasets.Dataset.from_list(rows)
    table.save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict(
        {"train": table.select(range(600)), "test": table.select(range(600, len(table)))}
    ).save_to_disk(str(tmp_path / "dsd"))
    shards = tmp_path / "shards"
    shards.mkdir()
    # Two parquet shards cut inside a task: a task spans shards and is still one task.
    table.select(range(700)).to_parquet(str(shards / "data-00000-of-00002.parquet"))
    table.select(range(700, len(table))).to_parquet(str(shards / "data-00001-of-00002.parquet"))
    jsonl = tmp_path / "superni.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    expected = signature(reference)
    assert len(expected) == 22
    for copy in (tmp_path / "ds", tmp_path / "dsd", shards, jsonl):
        loaded = load_task_set(str(copy))
        assert signature(loaded) == expected, copy
        by_name = {t.name: t for t in loaded}
        for task in reference:
            assert by_name[task.name].instances == task.instances
            assert by_name[task.name].metadata == task.metadata  # label source, unseen labels


def _shard(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "shard.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROW = {"task_name": "t1", "definition": "Say yes or no.", "inputs": "x", "targets": "yes"}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([ROW, {**ROW, "targets": []}], "line 2, field 'targets': instance has no output"),
        ([ROW, {**ROW, "inputs": 3}], "line 2, field 'inputs': expected a string, got a number"),
        ([ROW, {**ROW, "definition": "Other."}], "line 2, field 'definition': task 't1' has"),
        ([{k: v for k, v in ROW.items() if k != "targets"}], "line 1: table has no column"),
        ([ROW, {**ROW, "positives": [{"input": "a"}]}], "field 'positives[0].output'"),
        ([{**ROW, "id": "a"}, {**ROW, "id": "a"}], "duplicate instance id 'a'"),
    ],
)
def test_bad_rows_name_file_line_and_column(tmp_path, rows, message):
    path = _shard(tmp_path, rows)
    with pytest.raises(TunelensInputError) as caught:
        load_tasks([path])
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_parquet_missing_column_and_cli_exit_2(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"task_name": ["t"], "definition": ["d"], "inputs": ["x"]}), path)
    result = subprocess.run(
        [sys.executable, "-m", "tunelens", "tasks", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"{path}: table has no column 'targets'" in result.stderr


def test_shard_rows_group_into_tasks_with_default_ids(tmp_path):
    path = _shard(tmp_path, [ROW, {**ROW, "task_name": "t2"}, {**ROW, "targets": ["no"]}])
    t1, t2 = load_tasks([path])
    assert (t1.name, t2.name) == ("t1", "t2")
    assert [i.id for i in t1.instances] == ["t1-0", "t1-1"]
    assert t1.instances[1].outputs == ("no",)


def test_a_one_task_shard_is_a_task_file_for_decide(tmp_path):
    from tunelens.tasks.loaders import load_task_file

    one = _shard(tmp_path, [ROW, {**ROW, "targets": "no"}])
    assert load_task_file(one).name == "t1"
    many = _shard(tmp_path, [ROW, {**ROW, "task_name": "t2"}])
    with pytest.raises(TunelensInputError, match="holds 2 tasks where one task file"):
        load_task_file(many)
