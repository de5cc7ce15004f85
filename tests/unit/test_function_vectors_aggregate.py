"""Function vectors without a model: the draw, the head ranking, the aggregation, export rows.

The aggregation is checked against sums and intervals computed here (plain loops,
scipy's t distribution), on cells whose readings are made up so that the dev and
test queries disagree about the best layer.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import stats

from tunelens.api import Cell
from tunelens.errors import TunelensInputError
from tunelens.experiments.function_vectors.aggregate import (
    aggregate_function_vectors,
    mean_aie,
    top_heads,
)
from tunelens.experiments.function_vectors.measure import draw_task, gold_index
from tunelens.experiments.function_vectors.plan import limit_section
from tunelens.experiments.function_vectors.results import dump_function_vectors
from tunelens.experiments.function_vectors.spec import FunctionVectorsSpec
from tunelens.experiments.function_vectors.tidy import tidy_rows
from tunelens.tasks.types import Instance, Task


def word_task(n: int = 30, labels: tuple[str, ...] = ("left", "right")) -> Task:
    """Unique inputs, so an example's input names its instance."""
    instances = tuple(Instance(f"i{i}", f"word{i}", (labels[i % len(labels)],)) for i in range(n))
    return Task("words", "", instances, labels=labels)


# ---------------------------------------------------------------- the draw


def test_the_draw_holds_the_queries_out_and_shuffles_labels_among_demonstrations() -> None:
    task = word_task()
    truth = {i.input: i.outputs[0] for i in task.instances}
    draw = draw_task(task, k=6, n_prompts=5, n_queries=8, seed=3)
    query_inputs = {q.input for q in draw.queries}
    assert len(query_inputs) == 8
    used = [q.input for q, _ in draw.clean + draw.shuffled]
    used += [d.input for _, demos in draw.clean + draw.shuffled for d in demos]
    used += [d.input for demos in draw.query_demos for d in demos]
    assert not query_inputs & set(used)
    for _, demos in draw.clean:
        assert all(d.output == truth[d.input] for d in demos)
    moved = 0
    for query, demos in draw.shuffled:
        assert query.input not in {d.input for d in demos}
        assert Counter(d.output for d in demos) == Counter(truth[d.input] for d in demos)
        moved += sum(d.output != truth[d.input] for d in demos)
    assert moved > 0  # some label did move
    assert draw.n_dev == 4
    assert draw == draw_task(task, k=6, n_prompts=5, n_queries=8, seed=3)
    assert draw != draw_task(task, k=6, n_prompts=5, n_queries=8, seed=4)


def test_the_draw_refuses_small_tasks_and_free_text() -> None:
    with pytest.raises(TunelensInputError, match="n_queries") as error:
        draw_task(word_task(n=12), k=8, n_prompts=2, n_queries=4, seed=0)
    assert "13" in str(error.value)
    free = Task("free", "", word_task().instances, labels=None)
    with pytest.raises(TunelensInputError, match="label space"):
        draw_task(free, k=2, n_prompts=2, n_queries=2, seed=0)


def test_gold_is_the_first_reference_in_the_label_space() -> None:
    task = word_task(labels=("a", "b", "c"))
    assert gold_index(task, Instance("x", "w", ("zzz", "c"))) == 2
    with pytest.raises(TunelensInputError, match="no reference"):
        gold_index(task, Instance("x", "w", ("zzz",)))


# ---------------------------------------------------------------- ranking


def test_top_heads_rank_by_mean_effect_with_ties_to_the_lower_layer_and_head() -> None:
    aie = np.array([[0.1, 0.5, 0.0], [0.5, -0.2, 0.3]])
    assert top_heads(aie, 3) == [[1, 1], [2, 0], [2, 2]]  # layers 1-based
    assert top_heads(aie, 10) == [[1, 1], [2, 0], [2, 2], [1, 0], [1, 2], [2, 1]]
    rows = [{"aie": [[[1.0, 0.0]], [[0.0, 0.0]]]}, {"aie": [[[0.0, 4.0]]]}]
    assert mean_aie(rows).tolist() == [[1 / 3, 4 / 3]]


# ---------------------------------------------------------------- aggregation


def heads_cell(task: str, seed: int, aie: list, clean: list, shuffled: list):
    params = {"stage": "heads", "model": "m", "k": 4, "n_prompts": len(aie), "n_queries": 4}
    cell = Cell("function_vectors", f"heads {task}", params, seed, {}, "1")
    result = {
        "task": task,
        "n_layers": 2,
        "n_heads": 2,
        "head_dim": 3,
        "clean": {"p": clean, "correct": clean},
        "shuffled": {"p": shuffled, "correct": shuffled},
        "aie": aie,
        "forwards": 5,
        "rows": 20,
    }
    return cell, result


def vector_cell(task: str, seed: int, zs: list, icl: list, vec: list):
    params = {"stage": "vector", "model": "m", "heads": [[1, 0]]}
    cell = Cell("function_vectors", f"vector {task}", params, seed, {}, "1")
    result = {
        "task": task,
        "heads": [[1, 0]],
        "layers": [0, 1, 2],
        "n_dev": 2,
        "vector_norm": 1.0,
        "zero_shot": {"p": zs, "correct": zs},
        "icl": {"p": icl, "correct": icl},
        "vector": {"p": vec, "correct": vec},
        "forwards": 3,
        "rows": 10,
    }
    return cell, result


def fake_run(icl_gain: bool):
    """Three tasks, one seed, four queries each (2 dev, 2 test). Dev favours layer 1 (all
    right there), test favours layer 2; zero-shot gets the first test query right."""
    rng = np.random.default_rng(0)
    results = []
    for t in range(3):
        aie = rng.normal(0, 0.1, size=(2, 2, 2)).round(3).tolist()
        results.append(heads_cell(f"t{t}", 0, aie, [1.0, 1.0], [0.0, 1.0]))
    for t in range(3):
        zs = [0.0, 0.0, 1.0, 0.0]
        icl = [1.0, 1.0, 1.0, 1.0] if icl_gain else zs
        vec = [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, float(t == 0)], [0.0, 1.0, 1.0, 1.0]]
        results.append(vector_cell(f"t{t}", 0, zs, icl, vec))
    return results


def t_ci(values_by_cluster: list[list[float]]) -> list[float]:
    means = [float(np.mean(v)) for v in values_by_cluster]
    low, high = stats.t.interval(0.95, len(means) - 1, loc=np.mean(means), scale=stats.sem(means))
    return [float(low), float(high)]


def test_aggregation_chooses_the_layer_on_dev_and_reads_it_on_test() -> None:
    results = fake_run(icl_gain=True)
    (entry,) = dump_function_vectors(aggregate_function_vectors(results, h=2))
    aie_rows = [row for _, r in results[:3] for row in r["aie"]]
    by_hand = [
        [sum(row[layer][head] for row in aie_rows) / len(aie_rows) for head in range(2)]
        for layer in range(2)
    ]
    np.testing.assert_allclose(entry["aie"], by_hand, atol=1e-7)
    flat = sorted((-by_hand[lay][h], lay, h) for lay in range(2) for h in range(2))
    assert [[t["layer"], t["head"]] for t in entry["top_heads"]] == [
        [lay + 1, h] for _, lay, h in flat[:2]
    ]
    best = entry["best"]
    assert best["layer"] == 1 and best["accuracy_dev"] == 1.0
    test_at_1 = [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]  # tasks' test queries at layer 1
    assert best["accuracy_test"]["mean"] == pytest.approx(1 / 6)
    assert best["accuracy_test"]["ci"] == pytest.approx(t_ci(test_at_1))
    assert best["accuracy_test"]["n"] == 6 and best["accuracy_test"]["clusters"] == 3
    layer2 = entry["curve"][2]
    assert layer2["accuracy_test"]["mean"] == 1.0 and layer2["accuracy_dev"] == 0.5
    assert best["zero_shot_test"]["mean"] == pytest.approx(0.5)
    assert best["icl_gain_test"]["mean"] == pytest.approx(0.5)
    share = best["share_of_icl_gain"]
    assert share["mean"] == pytest.approx((1 / 6 - 0.5) / (1.0 - 0.5))
    assert entry["forwards"] == {"heads": 15, "vector": 9, "rows": 90}
    assert entry["verdict"][0].startswith("Adding the function vector of the top 2 heads")


def test_the_share_is_undecided_without_a_significant_icl_gain() -> None:
    (entry,) = aggregate_function_vectors(fake_run(icl_gain=False), h=2)
    share = entry["best"]["share_of_icl_gain"]
    assert share["mean"] is None and "not significant" in share["undecided"]
    assert "undecided" in entry["verdict"][1]


def test_export_rows_cover_every_head_and_layer() -> None:
    (entry,) = aggregate_function_vectors(fake_run(icl_gain=True), h=2)
    rows = tidy_rows({"function_vectors": [entry]})
    aie = [r for r in rows if r["measure"] == "aie"]
    assert len(aie) == 4 and {(r["layer"], r["head"]) for r in aie} == {
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
    }
    top = entry["top_heads"][0]
    row = next(r for r in aie if (r["layer"], r["head"]) == (top["layer"], top["head"]))
    assert row["ci_low"] == top["aie"]["ci"][0] and row["n"] == top["aie"]["n"]
    curve = [r for r in rows if r["measure"] == "accuracy_vector_test"]
    assert [r["layer"] for r in curve] == [0, 1, 2]
    best = next(r for r in rows if r["measure"] == "best_accuracy_test")
    assert best["layer"] == 1


# ---------------------------------------------------------------- the section


def test_the_section_and_its_limit() -> None:
    section = FunctionVectorsSpec(layers=[3, 0, 3])
    assert section.layers == [0, 3] and section.top_heads == 10
    limited = limit_section(section, 1)
    assert (limited.n_prompts, limited.n_queries) == (2, 2)
    assert limit_section(section, 5).n_prompts == 5
    with pytest.raises(ValueError):
        FunctionVectorsSpec(n_prompts=1)
    with pytest.raises(ValueError):
        FunctionVectorsSpec(unknown=1)  # type: ignore[call-arg]
