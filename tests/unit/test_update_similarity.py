"""Update-direction similarity (convergence/updates.py): Rec2FTP against hand counts, the
SimAOU floor against explicit loops, and the random-init control's pairing.

Every reference is computed here, by counting or by loops over pairs, not by the
module's formula.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from tunelens.experiments.convergence.results import UpdateSimilarity
from tunelens.experiments.convergence.updates import (
    MIN_REC2FTP_DENOMINATOR,
    aggregate_updates,
    compare_random_init,
    rec2ftp,
    rec2ftp_columns,
    update_similarity_cell,
)

# Hand-made answers of 12 pairs: 1 = right. Two tasks, "a" (pairs 0-5) and "b" (6-11).
ZS = [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1]
IT = [1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 1]
ICL = [1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 0]
TASKS = ["a"] * 6 + ["b"] * 6


def _hand_counts() -> dict[str, int]:
    counts = {"zs_wrong": 0, "it_fixed": 0, "icl_fixed": 0, "both_fixed": 0}
    for zs, it, icl in zip(ZS, IT, ICL, strict=True):
        if zs == 0:
            counts["zs_wrong"] += 1
            counts["it_fixed"] += it
            counts["icl_fixed"] += icl
            counts["both_fixed"] += it * icl
    return counts


def test_rec2ftp_counts_and_value_equal_a_hand_count() -> None:
    counts = _hand_counts()
    # written out from the table above: zs wrong = 0,1,2,3,6,7,8,9,10; IT fixes 0,1,2,6,7,9,10;
    # ICL right among those: 0,2,6,9
    assert counts == {"zs_wrong": 9, "it_fixed": 7, "icl_fixed": 6, "both_fixed": 4}
    columns = rec2ftp_columns(ZS, ICL, IT, TASKS)
    out = rec2ftp(np.concatenate([columns] * 2), list(range(24)))  # 14 fixed: decided
    assert out["it_fixed"] == 14 and out["both_fixed"] == 8 and out["zs_wrong"] == 18
    assert out["icl_fixed"] == 12 and out["n_pairs"] == 24
    assert out["value"]["mean"] == pytest.approx(100 * 4 / 7)
    low, high = out["value"]["ci"]
    assert low <= 100 * 4 / 7 <= high


def test_rec2ftp_floor_is_the_mismatched_pair_share() -> None:
    """For each IT-fixed pair: ICL's hit rate over the other zero-shot-wrong pairs of its task."""
    wrong = [i for i, z in enumerate(ZS) if z == 0]
    shares = []
    for i in wrong:
        if IT[i] == 1:
            partners = [j for j in wrong if j != i and TASKS[j] == TASKS[i]]
            shares.append(sum(ICL[j] for j in partners) / len(partners))
    expected = 100 * sum(shares) / len(shares)
    columns = rec2ftp_columns(ZS, ICL, IT, TASKS)
    out = rec2ftp(np.concatenate([columns] * 2), list(range(24)))
    assert out["floor"]["mean"] == pytest.approx(expected)
    assert out["above_floor"]["mean"] == pytest.approx(100 * 4 / 7 - expected)


def test_rec2ftp_is_undecided_on_a_small_denominator() -> None:
    columns = rec2ftp_columns(ZS, ICL, IT, TASKS)
    out = rec2ftp(columns, list(range(12)))
    assert out["it_fixed"] == 7 < MIN_REC2FTP_DENOMINATOR
    assert out["value"] is None and out["floor"] is None
    assert "only 7 pairs" in out["undecided"] and str(MIN_REC2FTP_DENOMINATOR) in out["undecided"]
    nothing = rec2ftp(rec2ftp_columns([1] * 4, [1] * 4, [1] * 4, ["a"] * 4), list(range(4)))
    assert nothing["it_fixed"] == 0 and nothing["value"] is None and nothing["undecided"]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def _cos(x: np.ndarray, y: np.ndarray) -> float:
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_simaou_and_its_floor_equal_loops_over_pairs() -> None:
    rng = np.random.default_rng(0)
    n, layers, hidden = 5, 3, 6
    zs, icl, it = (rng.normal(size=(n, layers, hidden)) for _ in range(3))
    icl[:, 0] = zs[:, 0]  # layer 0: no ICL update at all (the shared last token's embedding)
    tasks = ["a", "a", "a", "b", "b"]
    out = update_similarity_cell((zs, icl, it), (zs, icl, it), tasks)
    for i in range(n):
        assert out["residual"]["sim"][i][0] is None  # undefined, never 0
        for layer in range(1, layers):
            u_icl = _unit(icl[i, layer]) - _unit(zs[i, layer])
            u_it = _unit(it[i, layer]) - _unit(zs[i, layer])
            assert out["residual"]["sim"][i][layer] == pytest.approx(_cos(u_icl, u_it), abs=1e-6)
            partners = [j for j in range(n) if j != i and tasks[j] == tasks[i]]
            floor = np.mean(
                [_cos(u_icl, _unit(it[j, layer]) - _unit(zs[j, layer])) for j in partners]
            )
            assert out["residual"]["floor"][i][layer] == pytest.approx(floor, abs=1e-6)
    # the attention series is shifted by one: block b sits at layer b + 1
    assert out["attention"]["sim"][2][0] is None
    assert out["attention"]["sim"][2][2] == out["residual"]["sim"][2][1]


def test_missing_attention_outputs_keep_the_residual_series_and_say_why() -> None:
    states = tuple(np.ones((2, 2, 3)) * k for k in (1, 2, 3))
    out = update_similarity_cell(states, (None, None, None), ["a", "a"], "no projection")
    assert out["attention"] is None and out["attention_note"] == "no projection"
    assert len(out["residual"]["sim"]) == 2


# ---------------------------------------------------------------- pooled and controlled


def _member(seed: int, sim: np.ndarray, floor: np.ndarray, control: str) -> tuple:
    cell = SimpleNamespace(seed=seed, params={"control": control})
    n = sim.shape[0]
    result = {
        "n_pairs": n,
        "sets": list(range(n)),
        "tasks": ["a"] * n,
        "behaviour": {"label_correct": {"anchor": [0.0] * n, "icl": [1.0] * n, "it": [1.0] * n}},
        "update_similarity": {
            "residual": {"sim": sim.tolist(), "floor": floor.tolist()},
            "attention": None,
            "attention_note": "not tapped",
        },
    }
    return cell, result


def _condition(control: str) -> dict:
    return {"model": "m", "k": 2, "flip_fraction": 0.0, "relevance": "same"} | {
        "definition": False,
        "control": control,
    }


def test_random_init_control_is_paired_by_seed_and_pair() -> None:
    rng = np.random.default_rng(1)
    n, layers = 12, 3
    trained = {s: rng.uniform(0.4, 0.9, size=(n, layers)) for s in (0, 1)}
    control = {s: rng.uniform(-0.2, 0.3, size=(n, layers)) for s in (0, 1)}
    floors = {s: rng.uniform(-0.1, 0.1, size=(n, layers)) for s in (0, 1)}
    groups = [
        [_member(s, trained[s], floors[s], "none") for s in (0, 1)],
        [_member(s, control[s], floors[s], "random_init") for s in (1, 0)],  # order differs
    ]
    entries = []
    for members, control_name in zip(groups, ("none", "random_init"), strict=True):
        clusters = [(c.seed, j) for c, r in members for j in r["sets"]]
        entries.append(
            {
                "condition": _condition(control_name),
                "update_similarity": aggregate_updates(members, clusters),
            }
        )
    compare_random_init(entries, groups)
    updates = entries[0]["update_similarity"]
    assert "against_random_init" not in entries[1]["update_similarity"]
    against = updates["against_random_init"]["residual"]
    x = np.concatenate([trained[0], trained[1]])
    y = np.concatenate([control[0], control[1]])  # seed order, whatever the cell order
    for layer, row in enumerate(against["layers"]):
        assert row["random_init"]["mean"] == pytest.approx(y[:, layer].mean())
        assert row["difference"]["mean"] == pytest.approx((x - y)[:, layer].mean())
    assert against["n_pairs"] == 2 * n and against["seeds"] == [0, 1]
    # trained (0.4-0.9) beats both its floor (+-0.1) and its copy (-0.2-0.3) at layers 1, 2
    test = updates["against_random_init"]["residual_test"]
    assert test["passes_layers"] == [1, 2] and test["above_floor_layers"] == [1, 2]
    assert updates["against_random_init"]["attention"] is None
    assert updates["attention_note"] == "not tapped"
    pooled = updates["residual"]["layers"][1]
    assert pooled["simaou"]["mean"] == pytest.approx(x[:, 1].mean())
    assert pooled["floor"]["mean"] == pytest.approx(
        np.concatenate([floors[0], floors[1]])[:, 1].mean()
    )
    assert pooled["above_floor"]["p_holm"] is not None
    assert updates["residual"]["layers"][0]["above_floor"]["p_holm"] is None  # outside Holm
    UpdateSimilarity.model_validate(updates)  # the typed results.json shape


def test_a_copy_that_matches_the_trained_model_fails_deutchs_test() -> None:
    rng = np.random.default_rng(2)
    same = rng.uniform(0.4, 0.9, size=(10, 2))
    low = np.zeros((10, 2))
    groups = [[_member(0, same, low, "none")], [_member(0, same.copy(), low, "random_init")]]
    entries = [
        {
            "condition": _condition(c),
            "update_similarity": aggregate_updates(g, [(0, j) for j in range(10)]),
        }
        for g, c in zip(groups, ("none", "random_init"), strict=True)
    ]
    compare_random_init(entries, groups)
    test = entries[0]["update_similarity"]["against_random_init"]["residual_test"]
    assert test["above_floor_layers"] == [1] and test["passes_layers"] == []
    diff = entries[0]["update_similarity"]["against_random_init"]["residual"]["layers"][1]
    assert diff["difference"]["mean"] == 0.0 and (diff["above_random_init"]["p"] or 1.0) >= 0.05


def test_results_written_before_the_measure_have_none() -> None:
    cell, result = _member(0, np.zeros((3, 2)), np.zeros((3, 2)), "none")
    del result["update_similarity"]
    assert aggregate_updates([(cell, result)], [(0, 0), (0, 1), (0, 2)]) is None
    assert math.isfinite(MIN_REC2FTP_DENOMINATOR)
