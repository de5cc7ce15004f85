"""Loaders: SuperNI JSON, tunelens JSONL, folders, split files, and clear input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelens.errors import TunelensInputError
from tunelens.tasks.jsonl import load_jsonl, write_jsonl
from tunelens.tasks.loaders import load_split, load_superni_task, load_tasks
from tunelens.tasks.types import Example, Instance, Task


def superni(**overrides) -> dict:
    task = {
        "Contributors": ["someone"],
        "Source": ["somewhere"],
        "Categories": ["Textual Entailment"],
        "Definition": ["Does the premise entail the hypothesis?", "Answer yes or no."],
        "Positive Examples": [
            {"input": "p1", "output": "yes", "explanation": "it does"},
            {"input": "p2", "output": "no", "explanation": "it does not"},
        ],
        "Negative Examples": [{"input": "n1", "output": "maybe", "explanation": "not a label"}],
        "Instances": [
            {"id": "t-1", "input": "i1", "output": ["yes"]},
            {"id": "t-2", "input": "i2", "output": ["no"]},
            {"id": "t-3", "input": "i3", "output": ["yes"]},
            {"id": "t-4", "input": "i4", "output": ["no"]},
        ],
        "Instance License": ["MIT"],
        "Some Future Field": {"ignored": True},
    }
    task.update(overrides)
    return task


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_superni_task_fields(tmp_path):
    task = load_superni_task(write(tmp_path / "task001_demo.json", superni()))
    assert task.name == "task001_demo"
    assert task.definition == "Does the premise entail the hypothesis? Answer yes or no."
    assert task.categories == ("Textual Entailment",)
    assert task.positive_examples[0] == Example("p1", "yes", "it does")
    assert task.negative_examples == (Example("n1", "maybe", "not a label"),)
    assert task.instances[1] == Instance("t-2", "i2", ("no",))
    assert task.labels == ("no", "yes")
    assert task.source == str(tmp_path / "task001_demo.json")


def test_string_definition_and_output_and_missing_ids(tmp_path):
    data = superni(
        Definition="One string.",
        Instances=[{"input": "x", "output": "a"}, {"input": "y", "output": ["b", "c"]}],
    )
    task = load_superni_task(write(tmp_path / "t.json", data))
    assert task.definition == "One string."
    assert task.instances == (Instance("t-0", "x", ("a",)), Instance("t-1", "y", ("b", "c")))
    assert task.labels is None


def test_folder_tree_and_list_of_paths(tmp_path):
    write(tmp_path / "a" / "task1.json", superni())
    write(tmp_path / "b" / "deeper" / "task2.json", superni())
    write(tmp_path / "b" / ".hidden" / "task3.json", "not json")
    write(tmp_path / "b" / "notes.txt", "ignored")
    (tmp_path / "c.jsonl").write_text('{"input": "x", "output": "y"}\n')
    assert [t.name for t in load_tasks(tmp_path)] == ["task1", "task2", "c"]  # path order
    both = load_tasks([tmp_path / "b" / "deeper" / "task2.json", tmp_path / "a"])
    assert [t.name for t in both] == ["task2", "task1"]


def test_same_task_twice_is_an_error(tmp_path):
    path = write(tmp_path / "task1.json", superni())
    with pytest.raises(TunelensInputError, match="loaded twice"):
        load_tasks([path, path])


def test_split_files(tmp_path):
    for name in ("task1", "task2", "task3"):
        write(tmp_path / "tasks" / "sub" / f"{name}.json", superni())
    write(tmp_path / "splits" / "default" / "test_tasks.txt", "task2\n\ntask1\n")
    write(tmp_path / "splits" / "default" / "train_tasks.txt", "task3\ntask9\n")
    assert [t.name for t in load_split(tmp_path)] == ["task2", "task1"]
    with pytest.raises(TunelensInputError) as info:
        load_split(tmp_path, "default", "train")
    assert info.value.where == "line 2" and "task9" in str(info.value)
    assert [t.name for t in load_split(tmp_path, part="train", allow_missing=True)] == ["task3"]
    with pytest.raises(TunelensInputError, match="no split file"):
        load_split(tmp_path, "xlingual", "test")


JSONL_HEADER = {
    "tunelens_task": 1,
    "task": "sentiment",
    "definition": "Is the review positive or negative?",
    "labels": ["positive", "negative"],
    "categories": ["Sentiment Analysis"],
    "examples": [
        {"input": "Great.", "output": "positive", "explanation": "praise"},
        {"input": "Awful.", "output": "negative"},
    ],
}


def jsonl(path: Path, *objects) -> Path:
    return write(path, "".join(json.dumps(o) + "\n" for o in objects))


def test_jsonl_with_header(tmp_path):
    path = jsonl(
        tmp_path / "s.jsonl",
        JSONL_HEADER,
        {"input": "Fine film.", "output": "positive"},
        {"input": "Bad.", "output": ["negative"], "id": "b"},
    )
    task = load_jsonl(path)
    assert task.name == "sentiment"
    assert task.labels == ("negative", "positive")  # declared, though seen only once each
    assert task.positive_examples[0] == Example("Great.", "positive", "praise")
    assert task.instances == (
        Instance("sentiment-0", "Fine film.", ("positive",)),
        Instance("b", "Bad.", ("negative",)),
    )
    assert task.categories == ("Sentiment Analysis",)


def test_jsonl_without_header_derives_labels(tmp_path):
    rows = [{"input": f"x{i}", "output": "ab"[i % 2]} for i in range(6)]
    task = load_tasks(jsonl(tmp_path / "mine.jsonl", *rows))[0]
    assert task.name == "mine" and task.definition == "" and task.labels == ("a", "b")
    header = {"definition": "Copy.", "task": "copy"}  # header recognised without the key
    task = load_jsonl(jsonl(tmp_path / "c.jsonl", header, {"input": "q", "output": "q"}))
    assert task.name == "copy" and task.definition == "Copy." and task.labels is None


def test_jsonl_round_trip(tmp_path):
    task = Task(
        name="rt",
        definition='Quote "this" \u2028 and é.',
        instances=(Instance("1", "in\nput", ("a",)), Instance("2", "x", ("b", "c"))),
        positive_examples=(Example("e", "a", "why"), Example("f", "b")),
        negative_examples=(Example("g", "a", "wrong"),),
        categories=("C",),
        labels=("a", "b", "c"),  # "B" and "b" would be one label to exact match: refused
    )
    path = write_jsonl(task, tmp_path / "out" / "rt.jsonl")
    assert load_jsonl(path) == task.with_changes(source=str(path))
    free = task.with_changes(labels=None, instances=(Instance("1", "x", ("long text",)),))
    assert load_jsonl(write_jsonl(free, tmp_path / "free.jsonl")).labels is None


@pytest.mark.parametrize(
    ("name", "content", "where", "message"),
    [
        ("empty.json", "  \n", None, "file is empty"),
        ("bad.json", '{\n "Definition": [\n', "line 3", "invalid JSON"),
        ("list.json", "[]", None, "expected a JSON object"),
    ],
)
def test_superni_file_errors(tmp_path, name, content, where, message):
    with pytest.raises(TunelensInputError) as info:
        load_superni_task(write(tmp_path / name, content))
    assert info.value.source == str(tmp_path / name)
    assert message in str(info.value)
    if where:
        assert info.value.where.startswith(where)


def _without(key: str) -> dict:
    data = superni()
    del data[key]
    return data


@pytest.mark.parametrize(
    ("data", "where", "message"),
    [
        (_without("Definition"), "field 'Definition'", "no Definition"),
        (superni(Definition=[]), "field 'Definition'", "empty"),
        (_without("Instances"), "field 'Instances'", "no Instances"),
        (superni(Instances=[]), "field 'Instances'", "no instances"),
        (superni(Instances=[{"input": "x"}]), "field 'Instances[0].output'", "no output"),
        (
            superni(Instances=[{"input": "x", "output": []}]),
            "field 'Instances[0].output'",
            "no output",
        ),
        (superni(Instances=[{"output": ["a"]}]), "field 'Instances[0].input'", "no input"),
        (
            superni(Instances=[{"input": 3, "output": ["a"]}]),
            "field 'Instances[0].input'",
            "expected a string",
        ),
        (
            superni(Instances=[{"input": "x", "output": ["a", 1]}]),
            "field 'Instances[0].output[1]'",
            "expected a string",
        ),
        (superni(Instances=["x"]), "field 'Instances[0]'", "expected a JSON object"),
        (
            superni(**{"Positive Examples": [{"input": "x"}]}),
            "field 'Positive Examples[0].output'",
            "no output",
        ),
        (superni(Categories=[1]), "field 'Categories[0]'", "expected a string"),
        (superni(Instances=[{"id": "a", "input": "x", "output": "y"}] * 2), None, "duplicate"),
    ],
)
def test_superni_field_errors(tmp_path, data, where, message):
    path = write(tmp_path / "t.json", data)
    with pytest.raises(TunelensInputError) as info:
        load_superni_task(path)
    assert info.value.source == str(path)
    assert info.value.where == where
    assert message in info.value.message
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("lines", "where", "message"),
    [
        (['{"input": "x", "output": "y"}', "{oops"], "line 2, column 2", "invalid JSON"),
        (['{"input": "x", "output": "y"}', "", '["x", "y"]'], "line 3", "JSON object"),
        (['{"input": "x"}'], "line 1, field 'output'", "no output"),
        (['{"input": "x", "output": []}'], "line 1, field 'output'", "no output"),
        (['{"output": "y"}'], "line 1, field 'input'", "no input"),
        (
            ['{"tunelens_task": 1, "labels": []}', '{"input": "x", "output": "y"}'],
            "line 1, field 'labels'",
            "label space is empty",
        ),
        (
            ['{"tunelens_task": 1, "labels": ["a"]}', '{"input": "x", "output": "b"}'],
            "line 2, field 'output'",
            "not one of the labels",
        ),
        (
            ['{"tunelens_task": 2}', '{"input": "x", "output": "y"}'],
            "line 1, field 'tunelens_task'",
            "version",
        ),
        (['{"tunelens_task": 1, "definition": "d"}'], None, "no instances"),
        (['{"input": "x", "output": "y"}', '{"tunelens_task": 1}'], "line 2", "first line"),
        (
            ['{"tunelens_task": 1, "examples": [{"input": "x"}]}', '{"input": "x", "output": "y"}'],
            "line 1, field 'examples[0].output'",
            "no output",
        ),
    ],
)
def test_jsonl_errors(tmp_path, lines, where, message):
    path = write(tmp_path / "t.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(TunelensInputError) as info:
        load_jsonl(path)
    assert info.value.source == str(path)
    assert info.value.where == where
    assert message in info.value.message


def test_path_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TunelensInputError, match="no task files"):
        load_tasks(tmp_path / "empty")
    with pytest.raises(TunelensInputError, match="no such file"):
        load_tasks(tmp_path / "missing.json")
    with pytest.raises(TunelensInputError, match="unknown task file type"):
        load_tasks(write(tmp_path / "t.csv", "a,b"))
    (tmp_path / "b.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(TunelensInputError, match="UTF-8"):
        load_tasks(tmp_path / "b.json")


def test_exported_world_tasks_load_back_unchanged(tmp_path):
    from tunelens.tasks.world.export import export_world
    from tunelens.tasks.world.generator import generate_world

    world = generate_world(0)
    export_world(world, tmp_path)
    loaded = load_split(tmp_path, "default", "train") + load_split(tmp_path, "default", "test")
    originals = {t.name: t for t in world.train + world.heldout}
    assert [t.name for t in loaded] == [t.name for t in world.train + world.heldout]
    for task in loaded:
        original = originals[task.name]
        assert task.with_changes(source=original.source) == original  # labels derived alike
        assert task.metadata == original.metadata
