"""Costs files (CSV and YAML) and the expected-cost arithmetic, against hand-computed numbers."""

from __future__ import annotations

import pytest

from tunelens.errors import TunelensInputError
from tunelens.experiments.decide.costs import (
    OTHER,
    build_cost_matrix,
    confusion_cost_per_1000,
    cost_per_1000,
    guess_item_costs,
    item_costs,
    load_costs,
)
from tunelens.experiments.decide.metrics import confusion_matrix

LABELS = ("ham", "spam")


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_and_yaml_give_the_same_matrix(tmp_path):
    csv_path = write(tmp_path, "c.csv", "true,predicted,cost\nspam,ham,1\nham,spam,20\n")
    yaml_path = write(tmp_path, "c.yaml", "spam: {ham: 1}\nham: {spam: 20}\n")
    a, b = load_costs(csv_path, LABELS), load_costs(yaml_path, LABELS)
    assert a.costs == b.costs
    assert a.cost("spam", "ham") == 1 and a.cost("ham", "spam") == 20
    # missing correct pairs cost 0; an answer outside the labels costs the row's worst
    assert a.cost("ham", "ham") == 0 and a.cost("spam", "spam") == 0
    assert a.cost("ham", OTHER) == 20 and a.cost("spam", OTHER) == 1


def test_csv_columns_in_any_order_and_explicit_other(tmp_path):
    path = write(
        tmp_path,
        "c.csv",
        "cost,true,predicted\n1,spam,ham\n20,ham,spam\n5,ham,(other)\n0.5,ham,ham\n",
    )
    matrix = load_costs(path, LABELS)
    assert matrix.cost("ham", OTHER) == 5 and matrix.cost("ham", "ham") == 0.5
    assert matrix.to_json()["costs"] == [[0.5, 20, 5], [1, 0, 1]]


@pytest.mark.parametrize(
    "name,text,message,where",
    [
        (
            "c.csv",
            "true,predicted,cost\nspam,ham,1\n",
            "no cost for true 'ham' predicted 'spam'",
            None,
        ),
        (
            "c.csv",
            "true,predicted,cost\nspam,ham,1\nham,spma,2\n",
            "predicted label 'spma'",
            "line 3",
        ),
        ("c.csv", "true,predicted,cost\nspam,ham,1\nham,spam,x\n", "must be a number", "line 3"),
        ("c.csv", "true,predicted,cost\nspam,ham,-1\nham,spam,2\n", ">= 0", "line 2"),
        ("c.csv", "true,predicted,cost\nspam,ham,1\nspam,ham,2\n", "given twice", "line 3"),
        ("c.csv", "true,guess,cost\n", "header", "line 1"),
        ("c.csv", "true,predicted,cost\nspam,ham\n", "3 fields", "line 2"),
        ("c.yaml", "spam: [ham, 1]\n", "mapping predicted label", "spam"),
        ("c.yaml", "spam: {ham: nan}\nham: {spam: 1}\n", "finite", "spam -> ham"),
        ("c.yaml", "spam: {ham: 1\n", "invalid YAML", None),
        ("c.yaml", "- 1\n", "expected a mapping", None),
        ("c.txt", "x", ".csv or .yaml", None),
    ],
)
def test_bad_costs_files_name_the_place(tmp_path, name, text, message, where):
    path = write(tmp_path, name, text)
    with pytest.raises(TunelensInputError) as info:
        load_costs(path, LABELS)
    assert message in info.value.message
    assert info.value.source == str(path)
    if where is not None:
        assert info.value.where == where


def test_yaml_keys_stay_strings(tmp_path):
    path = write(tmp_path, "c.yaml", "yes: {no: 2}\nno: {yes: 3}\n")
    matrix = load_costs(path, ("no", "yes"))
    assert matrix.cost("yes", "no") == 2 and matrix.cost("no", "yes") == 3
    path = write(tmp_path, "d.yaml", "'0': {'1': 1.5}\n1: {0: 1e1}\n")
    matrix = load_costs(path, ("0", "1"))
    assert matrix.cost("0", "1") == 1.5 and matrix.cost("1", "0") == 10


def test_missing_file(tmp_path):
    with pytest.raises(TunelensInputError, match="no such file"):
        load_costs(tmp_path / "absent.csv", LABELS)


def test_expected_cost_per_1000_by_hand():
    matrix = build_cost_matrix([("spam", "ham", 1, ""), ("ham", "spam", 20, "")], LABELS)
    trues = ["ham", "ham", "ham", "spam", "spam", "ham", "spam", "ham"]
    preds = ["ham", "spam", "ham", "ham", "spam", OTHER, "ham", "ham"]
    # costs per item: 0, 20, 0, 1, 0, 20 (other -> worst of ham's row), 1, 0 = 42 over 8 items
    assert item_costs(trues, preds, matrix).tolist() == [0, 20, 0, 1, 0, 20, 1, 0]
    assert cost_per_1000(item_costs(trues, preds, matrix)) == pytest.approx(42 / 8 * 1000)
    confusion = confusion_matrix(trues, preds, LABELS)
    assert confusion.counts == ((3, 1, 1), (2, 1, 0))
    assert confusion_cost_per_1000(confusion.counts, matrix) == pytest.approx(5250.0)


def test_guess_cost_is_the_row_mean():
    matrix = build_cost_matrix([("spam", "ham", 1, ""), ("ham", "spam", 20, "")], LABELS)
    # a uniform guess over {ham, spam}: ham costs (0 + 20) / 2 = 10, spam (1 + 0) / 2 = 0.5
    costs = guess_item_costs(["ham", "spam", "spam", "spam"], matrix)
    assert costs.tolist() == [10, 0.5, 0.5, 0.5]
    assert cost_per_1000(costs) == pytest.approx(11.5 / 4 * 1000)
