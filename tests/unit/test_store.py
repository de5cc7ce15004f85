"""The cell store never reads a partially written cell, and writes atomically."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from tunelens.api import Cell
from tunelens.runs.store import CellStore, atomic_write_text, dumps, strict_json


def cell(i: int, experiment: str = "convergence") -> Cell:
    return Cell(experiment, f"cell {i}", {"i": i, "nested": {"b": 1, "a": [1, 2]}}, seed=i)


def test_round_trip_and_layout(tmp_path):
    store = CellStore(tmp_path)
    c = cell(1)
    path = store.write(c, {"x": 1.5, "arr": np.arange(3), "f32": np.float32(0.25)})
    assert path == tmp_path / "cells" / "convergence" / f"{c.key}.json"
    record = json.loads(path.read_text())
    assert record["cell"] == {
        "experiment": "convergence",
        "name": "cell 1",
        "params": c.params,
        "seed": 1,
        "inputs": {},
        "code_version": "1",
        "key": c.key,
    }
    assert store.read(c) == {"x": 1.5, "arr": [0, 1, 2], "f32": 0.25}
    assert store.has(c) and store.finished_keys() == {c.key}
    assert store.finished_keys("audit") == set()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_leftover_temp_file_is_not_a_finished_cell(tmp_path):
    store = CellStore(tmp_path)
    c = cell(2)
    folder = store.path(c).parent
    folder.mkdir(parents=True)
    # What a writer killed before its rename leaves behind: a hidden temporary file.
    temp = folder / f".{c.key}.json.abc123.tmp"
    temp.write_text(dumps({"cell": {"key": c.key}, "result": {"x": 1}}))
    assert store.finished_keys() == set()
    assert store.read(c) is None and not store.has(c)


def test_truncated_or_foreign_json_is_missing(tmp_path):
    store = CellStore(tmp_path)
    full, cut, other, wrong_shape = cell(3), cell(4), cell(5), cell(6)
    store.write(full, {"x": 1})
    text = dumps({"cell": {"key": cut.key}, "result": {"values": list(range(100))}})
    store.path(cut).write_text(text[: len(text) // 2])  # a partial write
    # A whole file under the wrong name (copied by hand) does not count either.
    store.path(other).write_text(dumps({"cell": {"key": "0" * 20}, "result": {}}))
    store.path(wrong_shape).write_text("[1, 2, 3]")
    (store.path(full).parent / "notes.txt").write_text("ignored")
    assert store.finished_keys() == {full.key}
    assert store.read(cut) is None and store.read(other) is None
    assert store.read(wrong_shape) is None


def test_failed_write_leaves_neither_file_nor_temp(tmp_path, monkeypatch):
    target = tmp_path / "cells" / "x" / "k.json"

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    from tunelens import io as io_module
    from tunelens.errors import TunelensInputError

    monkeypatch.setattr(io_module.os, "replace", boom)
    with pytest.raises(TunelensInputError, match=f"{target}: cannot write: No space left"):
        atomic_write_text(target, "{}")  # names the target, never the temporary file
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "f.json"
    atomic_write_text(target, "old contents that are long")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["f.json"]


def test_dumps_is_canonical_and_strict_json_drops_nan():
    assert dumps({"b": 1, "a": {"d": 2, "c": 3}}) == '{"a": {"c": 3, "d": 2}, "b": 1}'
    assert strict_json({"x": [math.nan, 1.0, math.inf], "y": (1, 2)}) == {
        "x": [None, 1.0, None],
        "y": [1, 2],
    }


def test_model_cache_loads_once_and_evicts_least_recently_used():
    from tunelens.runs.executors import ModelCache

    calls = []

    def loader(name, *, dtype, device):
        calls.append((name, dtype, device))
        return object()

    cache = ModelCache(loader, max_models=2)
    a = cache("a")
    assert cache("a") is a and cache.loads == 1
    cache("b", dtype="bfloat16")
    cache("a")  # a is now the most recently used
    cache("c")  # evicts b
    assert len(cache) == 2 and cache("a") is a
    cache("b", dtype="bfloat16")
    assert cache.loads == 4
    assert calls[1] == ("b", "bfloat16", "cpu")
