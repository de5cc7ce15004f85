"""The shipped Super-NaturalInstructions subset loads exactly as its index.tsv describes.

The folder is found through $TUNELENS_SUPERNI or at ../shared/data/superni
relative to the repository root; the tests skip when it is absent.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from tunelens.errors import TunelensInputError
from tunelens.prompts import PromptStyle, render_prompt
from tunelens.tasks.jsonl import load_jsonl, write_jsonl
from tunelens.tasks.loaders import load_split, load_tasks
from tunelens.tasks.variants import simplified_definition

REPO = Path(__file__).resolve().parents[2]


def superni_root() -> Path | None:
    candidates = [os.environ.get("TUNELENS_SUPERNI"), REPO.parent / "shared" / "data" / "superni"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "index.tsv").is_file():
            return Path(candidate)
    return None


ROOT = superni_root()
pytestmark = pytest.mark.skipif(
    ROOT is None,
    reason="SuperNI subset not found: set TUNELENS_SUPERNI or place it at ../shared/data/superni",
)


@pytest.fixture(scope="module")
def index() -> list[dict[str, str]]:
    with open(ROOT / "index.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def tasks() -> dict:
    return {t.name: t for t in load_tasks(ROOT / "tasks")}


def test_every_task_matches_the_index(index, tasks):
    assert sorted(tasks) == sorted(row["task"] for row in index)
    for row in index:
        task = tasks[row["task"]]
        counts = json.loads(row["label_counts_json"])
        assert len(task.instances) == int(row["instances_kept"]), task.name
        # The label space holds every output kept; labels the definition names that no kept
        # instance uses (a subset's gap, e.g. task190's "E") stay in it (tasks.labels).
        assert task.labels is not None and set(counts) <= set(task.labels), task.name
        assert len(counts) == int(row["distinct_output_labels"]), task.name
        for unseen in set(task.labels) - set(counts):
            assert unseen in task.definition, (task.name, unseen)
        assert Counter(o for i in task.instances for o in i.outputs) == Counter(counts), task.name
        assert ", ".join(task.categories) == row["categories"], task.name
        assert task.definition.strip() and task.positive_examples, task.name
    # 22 domains occur in the subset's instances; its definition names all 47 of MetaWOZ.
    meta_woz = tasks["task1394_meta_woz_task_classification"]
    assert len({o for i in meta_woz.instances for o in i.outputs}) == 22
    assert len(meta_woz.labels) == 47


def test_split_files_load(index):
    for part in ("test", "train"):
        expected = [row["task"] for row in index if row["split"] == part]
        loaded = load_split(ROOT, "default", part, allow_missing=True)
        assert sorted(t.name for t in loaded) == sorted(expected)
    # The subset holds 16 of the 119 test tasks the split names: strict loading says which.
    with pytest.raises(TunelensInputError) as info:
        load_split(ROOT, "default", "test")
    assert info.value.where == "line 1" and "test_tasks.txt" in info.value.source


def test_simplified_definitions_of_real_tasks(tasks):
    for task in tasks.values():
        simple = simplified_definition(task).definition
        label_words = {w for label in task.labels for w in re.findall(r"\w+", label.lower())}
        content = {w for w in re.findall(r"\w+", task.definition.lower()) if len(w) > 3}
        assert all(f'"{label}"' in simple for label in task.labels), task.name
        leaked = (set(re.findall(r"\w+", simple.lower())) & content) - label_words - {"answer"}
        assert not leaked, (task.name, leaked)


def test_jsonl_round_trip_of_real_tasks(tasks, tmp_path):
    for task in tasks.values():
        back = load_jsonl(write_jsonl(task, tmp_path / f"{task.name}.jsonl"))
        assert back.with_changes(source=task.source) == task


def test_tk_prompt_of_a_real_task(tasks):
    task = tasks["task199_mnli_classification"]
    prompt = render_prompt(task, "Q", None, PromptStyle())
    assert prompt.startswith("Definition: In this task, you're given a pair of sentences")
    assert prompt.count("Positive Example ") == 2
    assert prompt.endswith("Now complete the following example -\nInput: Q\nOutput:")
