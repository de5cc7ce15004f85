"""Question 1: does in-context learning move hidden states where instruction tuning does?

For each (demonstration set, anchor) pair the model produces three hidden
states at the last prompt token, at every layer:

- ``anchor``: the base model on the anchor query alone;
- ``icl``: the base model on the k demonstrations followed by the anchor query;
- ``it``: the model tuned on those k demonstrations, on the anchor query alone.

A set is tuned once and probed with every anchor paired with it. Sampling
(``tunelens.tasks.sampling.sample_demo_sets``) depends only on (seed,
relevance), so conditions that differ in flips, definition or control are
measured on the same draws (a paired design), and across k the anchors are the
same and the demonstrations nested (those for k are a prefix of those for a
larger k). Flipped labels and shuffled tokens come from ``tunelens.tasks.variants``.
Cell results hold per-pair cosines; statistics are computed when cells are
aggregated, pooled over seeds and per seed.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunelens.api import Cell, Experiment, RunContext, StudyInputs, register_experiment
from tunelens.measures.similarity import cosine_per_layer, linear_cka_per_layer
from tunelens.measures.stats import holm, mean_ci, paired_wilcoxon, paired_wilcoxon_greater
from tunelens.measures.text import exact_match
from tunelens.prompts import PromptStyle, Template, render_prompt, render_target
from tunelens.spec import ConvergenceSpec, TuningSpec
from tunelens.tasks.sampling import sample_demo_sets
from tunelens.tasks.types import Task
from tunelens.tasks.variants import flip_labels, output_space, shuffle_demo_tokens

PAIRS = ("icl_it", "anchor_icl", "anchor_it")
COMPARISONS = {
    "icl_it>anchor_icl": ("icl_it", "anchor_icl"),
    "icl_it>anchor_it": ("icl_it", "anchor_it"),
}


def _prompt_style(template: Template, definition: bool) -> PromptStyle:
    return PromptStyle(template=template, definition=definition, n_positive=0)


def run_convergence_cell(
    loaded, tasks: Sequence[Task], params: dict[str, Any], seed: int, progress=None
) -> dict[str, Any]:
    """One condition and seed: per-pair cosines per layer, CKA per layer, accuracies."""
    from tunelens.models.controls import random_init_like
    from tunelens.models.hidden_states import capture_last_token_states
    from tunelens.models.predict import generate_predictions
    from tunelens.models.tuning import attach_lora, tune_many_sets, tune_on_pairs

    if params["control"] == "random_init":
        loaded = random_init_like(loaded, seed=10_000 + seed)
    sets = sample_demo_sets(
        tasks,
        n_pairs=params["n_pairs"],
        anchors_per_set=params["anchors_per_set"],
        k=params["k"],
        relevance=params["relevance"],
        seed=seed,
        k_max=params.get("k_max"),
    )
    rng = random.Random(f"corrupt|{seed}|{params['flip_fraction']}|{params['control']}")
    style = _prompt_style(params["template"], params["definition"])
    # IT sees each demonstration as a zero-shot example: the anchor prompt's format.
    tune_style = style
    anchor_prompts, icl_prompts, references, owners = [], [], [], []
    tuning_sets = []
    for j, demo_set in enumerate(sets):
        demos = flip_labels(
            demo_set.demos, output_space(demo_set.task), params["flip_fraction"], rng
        )
        if params["control"] == "shuffled":
            demos = shuffle_demo_tokens(demos, rng)
        tuning_sets.append(
            [
                (render_prompt(demo_set.task, d.input, [], tune_style), render_target(d.output))
                for d in demos
            ]
        )
        for anchor in demo_set.anchors:
            anchor_prompts.append(render_prompt(demo_set.task, anchor.input, [], style))
            icl_prompts.append(render_prompt(demo_set.task, anchor.input, demos, style))
            references.append(anchor.outputs)
            owners.append(j)
    n_pairs = params["n_pairs"]
    anchor_prompts, icl_prompts = anchor_prompts[:n_pairs], icl_prompts[:n_pairs]
    references, owners = references[:n_pairs], owners[:n_pairs]

    h_anchor = capture_last_token_states(loaded, anchor_prompts).numpy()
    h_icl = capture_last_token_states(loaded, icl_prompts).numpy()
    max_new = params.get("max_new_tokens", 8)
    pred_anchor = generate_predictions(loaded, anchor_prompts, max_new_tokens=max_new)
    pred_icl = generate_predictions(loaded, icl_prompts, max_new_tokens=max_new)

    h_it = np.zeros_like(h_anchor)
    pred_it: list[str] = [""] * len(anchor_prompts)
    config = TuningSpec(**params["tuning"], seed=seed)
    used = sorted(set(owners))  # sets that own a kept pair, in set order

    def probe_tuned(j: int, tuned) -> None:
        rows = [i for i, owner in enumerate(owners) if owner == j]
        probe = tuned.as_loaded()
        prompts = [anchor_prompts[i] for i in rows]
        h_it[rows] = capture_last_token_states(probe, prompts).numpy()
        for i, pred in zip(
            rows, generate_predictions(probe, prompts, max_new_tokens=max_new), strict=True
        ):
            pred_it[i] = pred

    if config.method == "lora":
        # Every set's adapter in one batched run (equal to sequential runs; see
        # models.tuning.tune_many_sets), then one PEFT wrapper probed per adapter.
        states = tune_many_sets(loaded, [tuning_sets[j] for j in used], config)
        tuned = attach_lora(loaded, config)
        try:
            for n, (j, state) in enumerate(zip(used, states, strict=True)):
                tuned.load_adapter_state(state)
                probe_tuned(j, tuned)
                if progress is not None:
                    progress(n + 1, len(used))
        finally:
            tuned.unload()
    else:
        for n, j in enumerate(used):
            tuned = tune_on_pairs(loaded, tuning_sets[j], config)
            try:
                probe_tuned(j, tuned)
            finally:
                tuned.unload()
            if progress is not None:
                progress(n + 1, len(used))

    cos = {
        "icl_it": cosine_per_layer(h_icl, h_it),
        "anchor_icl": cosine_per_layer(h_anchor, h_icl),
        "anchor_it": cosine_per_layer(h_anchor, h_it),
    }
    cka = {
        "icl_it": linear_cka_per_layer(h_icl, h_it),
        "anchor_icl": linear_cka_per_layer(h_anchor, h_icl),
        "anchor_it": linear_cka_per_layer(h_anchor, h_it),
    }
    correct = {
        name: [exact_match(p, r) for p, r in zip(preds, references, strict=True)]
        for name, preds in (("anchor", pred_anchor), ("icl", pred_icl), ("it", pred_it))
    }
    return {
        "n_pairs": len(anchor_prompts),
        "n_layers": int(h_anchor.shape[1]),
        "cos": {name: np.round(v, 7).tolist() for name, v in cos.items()},
        "cka": {name: [round(float(x), 7) for x in v] for name, v in cka.items()},
        "correct": correct,
        "tasks": [sets[o].task.name for o in owners],
    }


def _layer_stats(cos: dict[str, np.ndarray], seed: int) -> list[dict[str, Any]]:
    """Per-layer means with bootstrap CIs and Holm-corrected one-sided Wilcoxon tests."""
    n_layers = cos["icl_it"].shape[1]
    layers: list[dict[str, Any]] = []
    raw: dict[str, list] = {name: [] for name in COMPARISONS}
    for layer in range(n_layers):
        entry: dict[str, Any] = {"layer": layer}
        for name in PAIRS:
            entry[f"cos_{name}"] = mean_ci(cos[name][:, layer], seed=seed)
        entry["wilcoxon"] = {}
        for comp, (x, y) in COMPARISONS.items():
            test = paired_wilcoxon_greater(cos[x][:, layer], cos[y][:, layer])
            raw[comp].append(test)
            entry["wilcoxon"][comp] = {
                "statistic": float(test.statistic),
                "p": float(test.p),
                "effect": float(test.effect),
            }
        layers.append(entry)
    for comp, tests in raw.items():
        adjusted = holm([t.p for t in tests])
        for layer, p_holm in enumerate(adjusted):
            layers[layer]["wilcoxon"][comp]["p_holm"] = float(p_holm)
    return layers


def condition_of(params: dict[str, Any]) -> dict[str, Any]:
    """The factor values that name a condition (seed excluded)."""
    return {
        key: params[key]
        for key in ("model", "k", "flip_fraction", "relevance", "definition", "control")
    }


def aggregate_convergence(results: list[tuple[Cell, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One results.json entry per condition, pooled over seeds, with per-seed statistics."""
    groups: dict[str, list[tuple[Cell, dict[str, Any]]]] = {}
    for cell, result in results:
        key = repr(sorted(condition_of(cell.params).items()))
        groups.setdefault(key, []).append((cell, result))
    entries = []
    for members in groups.values():
        members.sort(key=lambda m: m[0].seed)
        cos = {n: np.concatenate([np.asarray(r["cos"][n]) for _, r in members]) for n in PAIRS}
        correct = {
            n: np.concatenate([np.asarray(r["correct"][n]) for _, r in members])
            for n in ("anchor", "icl", "it")
        }
        cka = {n: np.mean([r["cka"][n] for _, r in members], axis=0) for n in PAIRS}
        layers = _layer_stats(cos, seed=0)
        for entry in layers:
            entry.update({f"cka_{n}": round(float(cka[n][entry["layer"]]), 6) for n in PAIRS})
        per_seed = []
        for cell, result in members:
            seed_cos = {n: np.asarray(result["cos"][n]) for n in PAIRS}
            per_seed.append(
                {
                    "seed": cell.seed,
                    "n_pairs": result["n_pairs"],
                    "layers": _layer_stats(seed_cos, seed=cell.seed),
                }
            )
        entries.append(
            {
                "condition": condition_of(members[0][0].params),
                "n_pairs": int(cos["icl_it"].shape[0]),
                "seeds": [cell.seed for cell, _ in members],
                "accuracy": {n: mean_ci(v, seed=0) for n, v in correct.items()},
                "layers": layers,
                "per_seed": per_seed,
            }
        )
    _compare_k(entries, groups)
    from tunelens.api.results import dump_convergence

    return dump_convergence(entries)  # validated: the typed shape of results.json


def _compare_k(
    entries: list[dict[str, Any]], groups: dict[str, list[tuple[Cell, dict[str, Any]]]]
) -> None:
    """Add ``k_comparison`` to each entry whose condition also ran at a larger k.

    Demonstration sets are nested (:mod:`tunelens.tasks.sampling`): for one seed
    the anchors are the same for every k and the demonstrations for k are a
    prefix of those for a larger k. So pair i of a seed at k and pair i of that
    seed at the largest k are the same anchor, and the two-sided Wilcoxon test
    of their ICL-IT cosines is paired. Holm across layers 1.. (layer 0, the
    embeddings, is reported but left out of the family).
    """
    by_condition: dict[str, tuple[dict[str, Any], list[tuple[Cell, dict[str, Any]]]]] = {}
    for entry, members in zip(entries, groups.values(), strict=True):
        by_condition[repr(sorted(entry["condition"].items()))] = (entry, members)
    for entry, members in by_condition.values():
        others = {**entry["condition"]}
        k = others.pop("k")
        bigger = [
            (e, m)
            for e, m in by_condition.values()
            if e["condition"]["k"] > k
            and {key: v for key, v in e["condition"].items() if key != "k"} == others
        ]
        if not bigger:
            continue
        top, top_members = max(bigger, key=lambda em: em[0]["condition"]["k"])
        mine = {cell.seed: np.asarray(r["cos"]["icl_it"]) for cell, r in members}
        theirs = {cell.seed: np.asarray(r["cos"]["icl_it"]) for cell, r in top_members}
        seeds = sorted(set(mine) & set(theirs))
        if not seeds or any(mine[s].shape != theirs[s].shape for s in seeds):
            continue
        x = np.concatenate([mine[s] for s in seeds])
        y = np.concatenate([theirs[s] for s in seeds])
        layers = []
        for layer in range(x.shape[1]):
            test = paired_wilcoxon(x[:, layer], y[:, layer])
            layers.append(
                {
                    "layer": layer,
                    "difference": round(float(np.mean(x[:, layer] - y[:, layer])), 6),
                    "statistic": test.statistic,
                    "p": test.p,
                    "effect": test.effect,
                }
            )
        adjusted = holm([entry["p"] for entry in layers[1:]])
        layers[0]["p_holm"] = None  # type: ignore[assignment]  # layer 0 is outside the family
        for row, p_holm in zip(layers[1:], adjusted, strict=True):
            row["p_holm"] = float(p_holm)
        entry["k_comparison"] = {
            "against_k": top["condition"]["k"],
            "paired_by": "seed and anchor (nested demonstration sets)",
            "n_pairs": int(x.shape[0]),
            "seeds": seeds,
            "layers": layers,
        }


@register_experiment
class ConvergenceExperiment(Experiment):
    """The convergence study as cells for ``tunelens.runs``."""

    name = "convergence"
    # 3: cell keys hold task and model content digests; nested demonstration sets.
    code_version = "3"

    def cells(self, section: ConvergenceSpec, inputs: StudyInputs) -> list[Cell]:
        tasks = inputs.tasks(section.tasks)
        digests = {"tasks": inputs.task_digest(section.tasks)}
        cells = []
        for model in section.models:
            cell_inputs = {**digests, "model": inputs.model_digest(model)}
            for k, flip, relevance, definition, control, seed in itertools.product(
                section.k,
                section.flip_fraction,
                section.relevance,
                section.definition,
                section.controls,
                section.seeds,
            ):
                params = {
                    "model": model,
                    "dtype": section.dtype,
                    "device": section.device,
                    "tasks": section.tasks,
                    "n_pairs": section.n_pairs,
                    "anchors_per_set": section.anchors_per_set,
                    "template": section.template,
                    "k": k,
                    "k_max": max(section.k),
                    "flip_fraction": flip,
                    "relevance": relevance,
                    "definition": definition,
                    "control": control,
                    "tuning": section.tuning.model_dump(),
                }
                name = (
                    f"{model} k={k} flip={flip} {relevance} def={definition} {control} seed={seed}"
                )
                cells.append(self.cell(name, params, seed, cell_inputs, {"tasks": tasks}))
        return cells

    def run_cell(self, cell: Cell, context: RunContext) -> dict[str, Any]:
        p = cell.params
        loaded = context.load_model(p["model"], dtype=p["dtype"], device=p["device"])

        def report(done: int, total: int) -> None:
            context.progress(f"tuning sets ({cell.name})", done, total)

        return run_convergence_cell(loaded, cell.data["tasks"], p, cell.seed, progress=report)

    def aggregate(
        self, section: ConvergenceSpec, results: list[tuple[Cell, dict[str, Any]]]
    ) -> dict[str, Any]:
        return {"convergence": aggregate_convergence(results)}
