"""decide.json from the cells: scores, intervals, confusion, costs, compute, comparisons.

Everything here is arithmetic on stored predictions (no model), so a report can
be rebuilt, and a costs file changed, without recomputing a method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tunelens.experiments.decide.compute import (
    ModelShape,
    break_even_items,
    compute_entry,
    training_flops,
)
from tunelens.experiments.decide.costs import OTHER, CostMatrix, guess_item_costs, item_costs
from tunelens.experiments.decide.methods import Method
from tunelens.experiments.decide.metrics import (
    confusion_matrix,
    decision,
    guess_confusion,
    guess_item_scores,
    item_scores,
    items_to_resolve,
    paired_difference,
    summary,
    to_label,
)
from tunelens.experiments.decide.split import Split, label_of
from tunelens.experiments.decide.token_shift import method_token_shift
from tunelens.measures.sanity import annotate as annotate_layers
from tunelens.measures.verdicts import format_share

GUESS = "label_guess"


def _method_entry(
    method: Method,
    result: Mapping[str, Any],
    split: Split,
    labels: Sequence[str],
    costs: CostMatrix | None,
    shape: ModelShape,
    seed: int,
    n_boot: int,
) -> tuple[dict[str, Any], np.ndarray]:
    trues = [label_of(i) for i in split.test]
    references = [i.outputs for i in split.test]
    predictions = result["predictions"]
    scores = item_scores(predictions, references)
    predicted = [to_label(p, labels) for p in predictions]
    confusion = confusion_matrix(trues, predicted, labels)
    entry: dict[str, Any] = {
        "id": method.id,
        "family": method.family,
        "name": method.name,
        "examples": method.examples,
        "n_items": len(scores),
        "accuracy": summary(scores, seed=seed, n_boot=n_boot),
        "confusion": confusion.to_json(),
        "out_of_space": sum(1 for p in predicted if p == OTHER),
    }
    if costs is not None:
        entry["cost_per_1000"] = summary(
            1000.0 * item_costs(trues, predicted, costs), seed=seed, n_boot=n_boot
        )
    training = None
    if "train" in result:
        train = result["train"]
        training = training_flops(train["pair_tokens"], train["uses"], shape)
        entry["train"] = {k: train[k] for k in ("pairs", "steps", "final_loss")}
        if "adapted_modules" in train:  # method cells from before issue 18 lack it
            entry["train"]["tuning"] = {
                "adapted_modules": train["adapted_modules"],
                "adapted": train.get("adapted"),
            }
    entry["compute"] = compute_entry(
        result["prompt_tokens"], result["answer_tokens"], shape, training
    )
    if "token_ranks" in result:  # tuned methods that generate (cells from before lack it)
        shift = method_token_shift(result["token_ranks"], method.name, seed=seed, n_boot=n_boot)
        if shift is not None:
            entry["token_shift"] = shift
    return entry, scores


def _guess_entry(
    split: Split, labels: Sequence[str], costs: CostMatrix | None, seed: int, n_boot: int
) -> tuple[dict[str, Any], np.ndarray]:
    trues = [label_of(i) for i in split.test]
    scores = guess_item_scores([i.outputs for i in split.test], labels)
    entry: dict[str, Any] = {
        "id": GUESS,
        "family": "baseline",
        "name": "label-space guess (expected)",
        "examples": 0,
        "n_items": len(scores),
        "accuracy": summary(scores, seed=seed, n_boot=n_boot),
        "confusion": guess_confusion(trues, labels).to_json(),
        "out_of_space": 0,
        "compute": {
            "per_1000_items": {
                "prompt_tokens_per_item": 0.0,
                "prompt_tokens": 0.0,
                "answer_tokens": 0.0,
                "flops": 0.0,
            }
        },
    }
    if costs is not None:
        entry["cost_per_1000"] = summary(
            1000.0 * guess_item_costs(trues, costs), seed=seed, n_boot=n_boot
        )
    return entry, scores


def comparison(
    a: str, b: str, scores: Mapping[str, np.ndarray], *, seed: int, n_boot: int, **context: Any
) -> dict[str, Any]:
    """a vs b on the same items: mean difference (points of accuracy), CI, who wins."""
    difference = paired_difference(scores[a], scores[b], seed=seed, n_boot=n_boot)
    verdict = decision(difference)
    winner = {"a": a, "b": b}.get(verdict)
    return {
        **context,
        "a": a,
        "b": b,
        "difference": difference,
        "winner": winner,
        "items_to_resolve": None if winner else items_to_resolve(len(scores[a]), difference),
    }


def _format_share(
    tuned: str, scores: Mapping[str, np.ndarray], controls: Sequence[str], seed: int, n_boot: int
) -> dict[str, Any]:
    """Share of the tuning gain (tuned - zero-shot) that each format-only control reaches."""
    names = [str(i) for i in range(len(scores[tuned]))]

    def per_item(method: str) -> dict[str, dict[str, float]]:
        return {n: {"em": float(v)} for n, v in zip(names, scores[method], strict=True)}

    original, untuned = per_item(tuned), per_item("zero_shot")
    out: dict[str, Any] = {
        "tuned": tuned,
        "zero_shot": "zero_shot",
        "tuning_gain": paired_difference(
            scores[tuned], scores["zero_shot"], seed=seed, n_boot=n_boot
        ),
        "controls": {},
    }
    for control in controls:
        share = format_share(per_item(control), original, untuned, names, "em", n_boot, seed)
        out["controls"][control] = {
            "share": {"mean": share["mean"], "ci": share["ci"]},
            "vs_tuned": paired_difference(scores[control], scores[tuned], seed=seed, n_boot=n_boot),
        }
    return out


def _similarity(result: Mapping[str, Any], split: Split, seed: int, n_boot: int) -> dict[str, Any]:
    cos = {name: np.asarray(values, dtype=np.float64) for name, values in result["cos"].items()}
    layers = []
    for layer in range(int(result["n_layers"])):
        layers.append(
            {
                "layer": layer,
                **{name: summary(v[:, layer], seed=seed, n_boot=n_boot) for name, v in cos.items()},
            }
        )
    items = split.test[: int(result["n_items"])]
    references = [i.outputs for i in items]
    accuracy = {
        name: summary(item_scores(preds, references), seed=seed, n_boot=n_boot)
        for name, preds in result["predictions"].items()
    }
    out = {"k": result["k"], "n_items": result["n_items"], "layers": layers, "accuracy": accuracy}
    annotate_layers(out, [result])  # stack labels, cross-pair cosines, near-identical warnings
    return out


def _best(
    entries: Sequence[Mapping[str, Any]], scores: Mapping[str, np.ndarray], seed: int, n_boot: int
) -> dict[str, Any]:
    """The best method by mean accuracy, the methods the intervals cannot tell from it, and the
    cheapest of those per 1,000 items (inference FLOPs)."""
    best = max(entries, key=lambda e: (e["accuracy"]["mean"], -e["examples"]))
    tied, versus = [], []
    for entry in entries:
        if entry["id"] == best["id"]:
            continue
        comp = comparison(best["id"], entry["id"], scores, seed=seed, n_boot=n_boot)
        versus.append(comp)
        if comp["winner"] is None:
            tied.append(entry["id"])
    flops = {e["id"]: e["compute"]["per_1000_items"]["flops"] for e in entries}
    candidates = [best["id"], *tied]
    cheapest = min(candidates, key=lambda i: (flops[i], candidates.index(i)))
    return {
        "id": best["id"],
        "indistinguishable": tied,
        "cheapest_at_equal_quality": cheapest,
        "versus": versus,
    }


def _comparisons(
    entries: list[dict[str, Any]],
    icl: list[dict[str, Any]],
    tuned: list[dict[str, Any]],
    scores: dict[str, np.ndarray],
    seed: int,
    n_boot: int,
) -> dict[str, list[dict[str, Any]]]:
    """Each ICL and tuned method against zero-shot; each tuned method against ICL at the
    largest k not above its n, with the items after which tuning's compute pays back."""
    comparisons: dict[str, list[dict[str, Any]]] = {"vs_zero_shot": [], "at_equal_size": []}
    for entry in [*icl, *tuned]:
        comparisons["vs_zero_shot"].append(
            comparison(
                entry["id"],
                "zero_shot",
                scores,
                seed=seed,
                n_boot=n_boot,
                examples=entry["examples"],
            )
        )
    for entry in tuned:
        smaller = [e for e in icl if e["examples"] <= entry["examples"]]
        if smaller:
            ref = max(smaller, key=lambda e: e["examples"])
            comp = comparison(
                entry["id"], ref["id"], scores, seed=seed, n_boot=n_boot, examples=entry["examples"]
            )
            comparisons["at_equal_size"].append(comp)
    flops = {e["id"]: e["compute"] for e in entries}
    for comp in comparisons["at_equal_size"]:
        train = flops[comp["a"]].get("training", {}).get("flops")
        if train is not None:
            items = break_even_items(
                train,
                flops[comp["a"]]["per_1000_items"]["flops"] / 1000,
                flops[comp["b"]]["per_1000_items"]["flops"] / 1000,
            )
            comp["tuning_pays_back_after_items"] = items
    return comparisons


def build_results(
    *,
    task: Any,
    split: Split,
    methods: Sequence[Method],
    results: Mapping[str, Mapping[str, Any]],
    costs: CostMatrix | None,
    shape: ModelShape,
    seed: int,
    n_boot: int,
) -> dict[str, Any]:
    """The measured part of decide.json: methods, curves, comparisons, shares, similarity."""
    labels = list(task.labels)
    entries: list[dict[str, Any]] = []
    scores: dict[str, np.ndarray] = {}
    for method in methods:
        if method.family == "similarity":
            continue
        entry, item = _method_entry(
            method, results[method.id], split, labels, costs, shape, seed, n_boot
        )
        entries.append(entry)
        scores[method.id] = item
    guess, guess_scores = _guess_entry(split, labels, costs, seed, n_boot)
    entries.append(guess)
    scores[GUESS] = guess_scores
    by_family: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_family.setdefault(entry["family"], []).append(entry)
    icl = by_family.get("icl", [])
    tuned = by_family.get("tuning", [])
    comparisons = _comparisons(entries, icl, tuned, scores, seed, n_boot)
    out: dict[str, Any] = {
        "methods": entries,
        "curves": {
            "zero_shot": "zero_shot",
            "label_guess": GUESS,
            "icl": [[e["examples"], e["id"]] for e in icl],
            "tuning": [[e["examples"], e["id"]] for e in tuned],
            "controls": [[e["examples"], e["id"]] for e in by_family.get("control", [])],
        },
        "comparisons": comparisons,
        "best": _best(entries, scores, seed, n_boot),
    }
    if tuned:
        largest = max(tuned, key=lambda e: e["examples"])
        controls = [e["id"] for e in by_family.get("control", [])]
        out["format_share"] = _format_share(largest["id"], scores, [*controls, GUESS], seed, n_boot)
    similarity = next((m for m in methods if m.family == "similarity"), None)
    if similarity is not None and similarity.id in results:
        out["similarity"] = _similarity(results[similarity.id], split, seed, n_boot)
    return out
