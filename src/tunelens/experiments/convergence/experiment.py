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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunelens.api import Cell, Experiment, RunContext, StudyInputs, register_experiment
from tunelens.api.experiment import ReportPart
from tunelens.experiments.convergence.results import ConvergenceResults
from tunelens.experiments.convergence.spec import ConvergenceSpec, fill_convergence
from tunelens.experiments.convergence.updates import aggregate_updates, compare_random_init
from tunelens.measures.sanity import annotate as annotate_layers
from tunelens.measures.sanity import cross_pair_readings
from tunelens.measures.similarity import (
    centered_cosine_per_layer,
    cosine_per_layer,
    debiased_linear_cka_per_layer,
    layer_moments,
    linear_cka_per_layer,
    mismatched_floor_per_layer,
    standardized_cosine_per_layer,
)
from tunelens.measures.stats import (
    cluster_mean_ci,
    cluster_means,
    gain_share,
    holm,
    paired_wilcoxon,
    paired_wilcoxon_greater,
)
from tunelens.measures.text import exact_match
from tunelens.prompts import PromptStyle, Template, render_prompt, render_target
from tunelens.spec import TuningSpec
from tunelens.tasks.sampling import sample_demo_sets
from tunelens.tasks.types import Task
from tunelens.tasks.variants import flip_labels, output_space, shuffle_demo_tokens

PAIRS = ("icl_it", "anchor_icl", "anchor_it")
COMPARISONS = {
    "icl_it>anchor_icl": ("icl_it", "anchor_icl"),
    "icl_it>anchor_it": ("icl_it", "anchor_it"),
}
# Matched pairs against their mismatched-pair floor, both with the centered cosine.
FLOOR_COMPARISONS = {"icl_it>floor": "icl_it"}
# Per-pair arrays of a cell, [n_pairs, layers] each, keyed by measure then pair.
MEASURES = ("cos", "cos_centered", "cos_standardized", "floor", "floor_raw", "floor_standardized")
PATCH_SOURCES = ("icl", "it")
# What the behaviour measures read (results.json ``behaviour.scoring``).
SCORING_METHOD = (
    "label log-likelihood: each label's whole target continuation summed over its tokens "
    "after the prompt, softmax over the task's labels; free-text tasks (no label space): "
    "the first-token distribution over the vocabulary at the answer position"
)


def tuning_label(tuning: dict[str, Any]) -> str:
    """'lora r=8 q_proj,v_proj' or 'full': the tuning factor of a condition."""
    if tuning.get("method") == "full":
        return "full"
    return f"lora r={tuning.get('lora_r')} {','.join(tuning.get('target_modules') or [])}"


def patching_default(model: str) -> bool:
    """Patching when the spec leaves it empty: on for the embedded world models only."""
    from tunelens.models.paths import is_world_model

    return is_world_model(model)


def _adapted(loaded, config: TuningSpec) -> dict[str, Any]:
    """Which weights tuning changes: LoRA's resolved targets in words, or every weight."""
    from tunelens.models.tuning.targets import FULL_ADAPTED, describe_targets

    if config.method == "full":
        return dict(FULL_ADAPTED)
    return describe_targets(loaded.model, config.target_modules)


def _answer_readings(
    scores: Any,
    labels: Sequence[Sequence[str]],
    references: Sequence[Sequence[str]],
    gold_first: Sequence[set[int]],
) -> tuple[list[np.ndarray], list[float]]:
    """Per row: the log label distribution and whether its argmax is a reference (0/1).

    ``scores`` is a :class:`~tunelens.models.scoring.LabelScores`. A row with a
    label space reads the softmax over its labels of their summed continuation
    log-likelihoods; a free-text row (no label space) falls back to the
    first-token distribution over the vocabulary at the answer position, correct
    when its argmax is the first token of a reference (``gold_first``).
    """
    import torch

    logps, correct = [], []
    for row, row_labels in enumerate(labels):
        if row_labels:
            logp = scores.log_distribution(row)
            # a reference under exact match's normalisation, as the generated answers are
            hit = exact_match(row_labels[int(np.argmax(logp))], references[row]) == 100.0
        else:
            logp = torch.log_softmax(scores.logits[row].double(), dim=-1).numpy()
            hit = int(np.argmax(logp)) in gold_first[row]
        logps.append(logp)
        correct.append(1.0 if hit else 0.0)
    return logps, correct


def _scoring_note(labels: Sequence[Sequence[str]]) -> dict[str, Any]:
    """How the cell's behaviour was read: label log-likelihoods, first tokens for free text."""
    label_rows = sum(1 for row in labels if row)
    return {
        "method": SCORING_METHOD,
        "label_rows": label_rows,
        "first_token_rows": len(labels) - label_rows,
    }


def _patching_cell(loaded, params: dict[str, Any], sources, patched, lp_icl) -> dict[str, Any]:
    """Per source and layer: each row's label accuracy and KL(ICL || patched)."""
    from tunelens.models.patching import n_patch_layers

    n_layers = n_patch_layers(loaded)
    layers = [layer for layer in params.get("patching_layers") or range(n_layers)]
    layers = [layer for layer in layers if layer < n_layers]
    patching: dict[str, Any] = {"layers": layers}
    for source_name in PATCH_SOURCES:
        rows_correct, rows_kl = [], []
        for layer in layers:
            lp, hits = patched(layer, sources[source_name])
            rows_correct.append(hits)
            rows_kl.append(_rounded(np.array(_kl(lp_icl, lp))))
        patching[source_name] = {"correct": rows_correct, "kl_to_icl": rows_kl}
    return patching


def _kl(p: Sequence[np.ndarray], q: Sequence[np.ndarray]) -> list[float]:
    """KL(p || q) per row, in nats, from log-probabilities."""
    return [float(np.sum(np.exp(lp) * (lp - lq))) for lp, lq in zip(p, q, strict=True)]


def _rounded(x: np.ndarray) -> list:
    return np.round(np.asarray(x, dtype=np.float64), 7).tolist()


def _prompt_style(template: Template, definition: bool) -> PromptStyle:
    return PromptStyle(template=template, definition=definition, n_positive=0)


# Rows of (set, anchor) pairs probed together, each with its own set's adapter.
PROBE_ROWS = 64


def _probe_batched(
    loaded,
    config: TuningSpec,
    prompts: Sequence[str],
    row_states: Sequence[dict[str, Any]],
    max_new_tokens: int,
    labels: Sequence[Sequence[str]],
    tasks: Sequence[str],
    tapped: list[tuple[np.ndarray | None, str | None]] | None = None,
) -> tuple[np.ndarray, Any, list[str]]:
    """Each prompt probed under its own LoRA adapter, many adapters per forward.

    Row i runs with adapter ``row_states[i]``: the adapters are copied into one
    :class:`~tunelens.models.tuning.many_sets.BatchedLoraLinear` stack (one
    adapter per row, applied by batched matmul), so every chunk of
    :data:`PROBE_ROWS` rows takes one capture forward, one label scoring (the
    prompt forward, then one short forward per label index on its cache, every
    row in each) and one greedy generate, where the per-set path swaps a PEFT
    adapter in and runs all three per set. Rows are put in the generation order
    (longest prompt first) so the stack lines up with the batch. Returns the
    hidden states, the label scores (with last-token logits and block states)
    and predictions in input order, equal to the per-set path up to float rounding.
    ``tapped``, when given, receives (attention outputs in input order or None, why
    not): what the capture forwards recorded (:class:`AttentionOutputTap`).
    """
    from tunelens.models.attention import AttentionOutputTap
    from tunelens.models.hidden_states import capture_last_token_states
    from tunelens.models.predict import generate_predictions, length_order
    from tunelens.models.scoring import merge_label_scores, score_label_continuations
    from tunelens.models.tuning.many_sets import batched_lora
    from tunelens.models.tuning.targets import resolve_target_modules, target_module_names

    model = loaded.model
    names = target_module_names(model, resolve_target_modules(model, config.target_modules))
    hidden, parts, preds = [], [], []
    attention: list[np.ndarray | None] = []
    note = None
    for start in range(0, len(prompts), PROBE_ROWS):
        chunk = list(prompts[start : start + PROBE_ROWS])
        _, order = length_order(loaded.tokenizer, chunk)  # generate's own batch order
        ordered = [chunk[i] for i in order]
        rows = [start + i for i in order]
        n = len(ordered)
        with batched_lora(model, names, [row_states[r] for r in rows], config) as layers:
            for layer in layers:
                layer.eval()  # no LoRA dropout at probe time (PEFT's eval mode)
            # padded, not packed (capture_packed): each batch row has its own adapter
            tap = AttentionOutputTap()
            h = capture_last_token_states(loaded, ordered, batch_size=n, tap=tap).numpy()
            scores = score_label_continuations(
                loaded,
                ordered,
                [labels[r] for r in rows],
                tasks=[tasks[r] for r in rows],
                batch_size=n,
            )
            generated = generate_predictions(
                loaded, ordered, max_new_tokens=max_new_tokens, batch_size=n
            )
        back = np.argsort(np.asarray(order))  # position in ``ordered`` of each input row
        hidden.append(h[back])
        parts.append((rows, scores))
        preds += [generated[i] for i in back]
        chunk_attention, note = _tapped(tap)
        attention.append(None if chunk_attention is None else chunk_attention[back])
    if tapped is not None:
        kept = [a for a in attention if a is not None]
        tapped.append(
            (np.concatenate(kept) if kept and len(kept) == len(attention) else None, note)
        )
    return np.concatenate(hidden), merge_label_scores(parts, len(prompts)), preds


@dataclass
class CellPrompts:
    """A cell's prompts, built once from its sampled sets: row i is one (set, anchor) pair."""

    anchor: list[str]
    icl: list[str]
    references: list[tuple[str, ...]]
    owners: list[int]  # the set each row's anchor belongs to
    tuning_sets: list[list[tuple[str, str]]]  # per set: (prompt, target) pairs IT trains on
    task_names: list[str]
    labels: list[list[str]]  # each row's label space (empty: a free-text task)
    gold_first: list[set[int]]  # free-text rows: the references' first token ids

    def score(self, model_like: Any, rows: Sequence[int] | None = None, **kwargs: Any) -> Any:
        """Label scores of the anchor prompts of ``rows`` (all by default) under ``model_like``."""
        from tunelens.models.scoring import score_label_continuations

        rows = range(len(self.anchor)) if rows is None else rows
        return score_label_continuations(
            model_like,
            [self.anchor[i] for i in rows],
            [self.labels[i] for i in rows],
            tasks=[self.task_names[i] for i in rows],
            **kwargs,
        )

    def score_prompts(self, model_like: Any, prompts: list[str]) -> Any:
        """Label scores of every row's ``prompts`` (anchor or ICL) under ``model_like``."""
        from tunelens.models.scoring import score_label_continuations

        return score_label_continuations(
            model_like, prompts, self.labels, tasks=list(self.task_names)
        )


@dataclass
class Reading:
    """What one condition (anchor, ICL or IT) of a cell gives: states, answers, label scores."""

    states: np.ndarray
    predictions: list[str]
    scores: Any
    # each block's attention output at the last token, [n, blocks, hidden], from the same
    # forwards as ``states`` (None where not tapped: ``attention_note`` says why)
    attention: np.ndarray | None = None
    attention_note: str | None = None


def _tapped(tap: Any) -> tuple[np.ndarray | None, str | None]:
    """What an AttentionOutputTap recorded, as numpy, and why not when it did not."""
    stacked = tap.stacked()
    return (None if stacked is None else stacked.numpy()), tap.unsupported


def run_convergence_cell(
    loaded,
    tasks: Sequence[Task],
    params: dict[str, Any],
    seed: int,
    progress=None,
    adapters_dir: str | None = None,
    *,
    batched_probe: bool = True,
) -> dict[str, Any]:
    """One condition and seed: per-pair similarities per layer, CKA, behaviour, patching.

    Raw, centered and standardized cosines per pair and their mismatched-pair
    floors (the centering pool: every anchor, ICL and IT state of this cell);
    biased and debiased CKA; generated predictions; the label distribution of
    the anchor, ICL and IT forwards (softmax over the task's labels of each
    label's summed continuation log-likelihood, :mod:`tunelens.models.scoring`;
    free-text tasks: the first-token distribution over the vocabulary); with
    ``params["patching"]``, the anchor forward with the ICL or IT state patched
    in at each layer, the label continuations reading the patch through the cache.

    LoRA cells probe every tuned set at once (:func:`_probe_batched`);
    ``batched_probe=False`` probes one PEFT-wrapped set at a time, the reference
    the tests compare it with.
    """
    from tunelens.models.controls import random_init_like

    if params["control"] == "random_init":
        loaded = random_init_like(loaded, seed=10_000 + seed)
    prompts = _cell_prompts(loaded, tasks, params, seed)
    max_new = params.get("max_new_tokens", 8)
    anchor, icl = _read_untuned(loaded, prompts, max_new)
    config = TuningSpec(**params["tuning"], seed=seed)
    adapted = _adapted(loaded, config)
    tuned = _read_tuned(
        loaded, prompts, anchor.states, config, max_new, progress, adapters_dir, batched_probe
    )
    similarities = _similarities(anchor.states, icl.states, tuned.states, prompts.task_names)
    behaviour, readings = _label_behaviour(prompts, anchor, icl, tuned)
    patching = None
    if params.get("patching"):
        patching = _patched_readings(loaded, params, prompts, icl, tuned, readings)
    conditions = (anchor, icl, tuned)
    result = _cell_result(loaded, prompts, conditions, similarities, behaviour, patching, adapted)
    result["update_similarity"] = _update_similarity(conditions, prompts.task_names)
    return result


def _update_similarity(conditions: tuple[Reading, Reading, Reading], tasks: list[str]) -> Any:
    """SimAOU per pair and layer, attention output and residual stream, with their floors."""
    from tunelens.experiments.convergence.updates import update_similarity_cell

    note = next((c.attention_note for c in conditions if c.attention_note), None)
    return update_similarity_cell(
        tuple(c.states for c in conditions),  # type: ignore[arg-type]
        tuple(c.attention for c in conditions),  # type: ignore[arg-type]
        tasks,
        note,
    )


def _cell_prompts(loaded, tasks: Sequence[Task], params: dict[str, Any], seed: int) -> CellPrompts:
    """The cell's sampled sets rendered: anchor and ICL prompts per pair, IT's pairs per set."""
    from tunelens.models.patching import label_token_ids

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
    chat = loaded.tokenizer  # the chat template renders through the model's own tokenizer
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
                (render_prompt(demo_set.task, d.input, [], style, chat), render_target(d.output))
                for d in demos
            ]
        )
        for anchor in demo_set.anchors:
            anchor_prompts.append(render_prompt(demo_set.task, anchor.input, [], style, chat))
            icl_prompts.append(render_prompt(demo_set.task, anchor.input, demos, style, chat))
            references.append(anchor.outputs)
            owners.append(j)
    n = params["n_pairs"]
    owners = owners[:n]
    references = references[:n]
    # Each row's labels (its task's label space; none for a free-text task) are scored by
    # their whole continuations; free-text rows fall back to the first reference token.
    labels = [list(sets[o].task.labels or ()) for o in owners]
    return CellPrompts(
        anchor=anchor_prompts[:n],
        icl=icl_prompts[:n],
        references=references,
        owners=owners,
        tuning_sets=tuning_sets,
        task_names=[sets[o].task.name for o in owners],
        labels=labels,
        gold_first=[
            set(label_token_ids(loaded.tokenizer, refs)) if not row else set()
            for refs, row in zip(references, labels, strict=True)
        ],
    )


def _read_untuned(loaded, prompts: CellPrompts, max_new: int) -> tuple[Reading, Reading]:
    """The untuned model on the anchor and on the ICL prompts. The anchors of a set share
    its demonstrations (and a task's prompts its definition): packed rows compute those
    tokens once."""
    from tunelens.models.attention import AttentionOutputTap
    from tunelens.models.hidden_states import capture_packed
    from tunelens.models.predict import generate_predictions

    taps = AttentionOutputTap(), AttentionOutputTap()  # attention outputs, same forwards
    h_anchor = capture_packed(loaded, prompts.anchor, tap=taps[0]).numpy()
    h_icl = capture_packed(loaded, prompts.icl, tap=taps[1]).numpy()
    pred_anchor = generate_predictions(loaded, prompts.anchor, max_new_tokens=max_new)
    pred_icl = generate_predictions(loaded, prompts.icl, max_new_tokens=max_new)
    fw_anchor = prompts.score_prompts(loaded, prompts.anchor)
    fw_icl = prompts.score_prompts(loaded, prompts.icl)
    return (
        Reading(h_anchor, pred_anchor, fw_anchor, *_tapped(taps[0])),
        Reading(h_icl, pred_icl, fw_icl, *_tapped(taps[1])),
    )


@dataclass
class _SetProbe:
    """The IT reading filled set by set (the per-set path): states, scores, answers."""

    prompts: CellPrompts
    max_new: int
    states: np.ndarray
    parts: list[tuple[list[int], Any]] = field(default_factory=list)  # (rows, label scores)
    predictions: list[str] = field(default_factory=list)
    attention: np.ndarray | None = None  # [n, blocks, hidden], filled set by set
    attention_note: str | None = None

    def __call__(self, j: int, tuned: Any) -> None:
        """Read the anchors of set ``j`` under its tuned model."""
        from tunelens.models.attention import AttentionOutputTap
        from tunelens.models.hidden_states import capture_last_token_states
        from tunelens.models.predict import generate_predictions

        rows = [i for i, owner in enumerate(self.prompts.owners) if owner == j]
        probe = tuned.as_loaded()
        texts = [self.prompts.anchor[i] for i in rows]
        tap = AttentionOutputTap()
        self.states[rows] = capture_last_token_states(probe, texts, tap=tap).numpy()
        self._keep_attention(rows, tap)
        self.parts.append((rows, self.prompts.score(probe, rows)))
        answers = generate_predictions(probe, texts, max_new_tokens=self.max_new)
        for i, answer in zip(rows, answers, strict=True):
            self.predictions[i] = answer

    def _keep_attention(self, rows: list[int], tap: Any) -> None:
        """The set's attention outputs into their rows (a set without them: none kept)."""
        tapped, note = _tapped(tap)
        if tapped is None or self.attention_note is not None:
            self.attention, self.attention_note = None, self.attention_note or note or "not tapped"
            return
        if self.attention is None:
            self.attention = np.zeros((len(self.prompts.anchor), *tapped.shape[1:]), np.float32)
        self.attention[rows] = tapped

    def reading(self) -> Reading:
        """The IT reading of every row, once each set has been probed."""
        from tunelens.models.scoring import merge_label_scores

        scores = merge_label_scores(self.parts, len(self.prompts.anchor))
        return Reading(self.states, self.predictions, scores, self.attention, self.attention_note)


def _read_tuned(
    loaded,
    prompts: CellPrompts,
    untuned_states: np.ndarray,
    config: TuningSpec,
    max_new: int,
    progress,
    adapters_dir: str | None,
    batched_probe: bool,
) -> Reading:
    """Tune one model per set and read every anchor under its own set's tuning."""
    n = len(prompts.anchor)
    probe = _SetProbe(prompts, max_new, np.zeros_like(untuned_states), [], [""] * n)
    used = sorted(set(prompts.owners))  # sets that own a kept pair, in set order
    batched = None
    if config.method == "lora":
        batched = _tune_lora_sets(
            loaded, prompts, config, used, probe, progress, adapters_dir, batched_probe
        )
    else:
        _tune_full_sets(loaded, prompts, config, used, probe, progress, adapters_dir)
    if batched is not None:
        return batched
    return probe.reading()


def _tune_lora_sets(
    loaded,
    prompts: CellPrompts,
    config: TuningSpec,
    used: list[int],
    probe: _SetProbe,
    progress,
    adapters_dir: str | None,
    batched_probe: bool,
) -> Reading | None:
    """Every set's adapter in one batched run (equal to sequential runs; see
    models.tuning.tune_many_sets), then all probed together, one adapter per row (or, as
    the reference, one PEFT wrapper probed per adapter: then None, ``probe`` holds it)."""
    from tunelens.models.tuning import attach_lora, tune_many_sets

    states = tune_many_sets(loaded, [prompts.tuning_sets[j] for j in used], config)
    reading = None
    if batched_probe:
        by_set = dict(zip(used, states, strict=True))
        tapped: list[tuple[np.ndarray | None, str | None]] = []
        h_it, fw_it, pred_it = _probe_batched(
            loaded,
            config,
            prompts.anchor,
            [by_set[o] for o in prompts.owners],
            probe.max_new,
            prompts.labels,
            prompts.task_names,
            tapped,
        )
        reading = Reading(h_it, pred_it, fw_it, *tapped[0])
        if progress is not None:
            progress(len(used), len(used))
    if adapters_dir is not None or not batched_probe:
        tuned = attach_lora(loaded, config)
        try:
            for n, (j, state) in enumerate(zip(used, states, strict=True)):
                tuned.load_adapter_state(state)
                if not batched_probe:
                    probe(j, tuned)
                if adapters_dir is not None:  # --save-adapters: one adapter per set
                    tuned.save(f"{adapters_dir}/set-{j}")
                if progress is not None and not batched_probe:
                    progress(n + 1, len(used))
        finally:
            tuned.unload()
    return reading


def _tune_full_sets(
    loaded,
    prompts: CellPrompts,
    config: TuningSpec,
    used: list[int],
    probe: _SetProbe,
    progress,
    adapters_dir: str | None,
) -> None:
    """Full fine-tuning: one tuned copy per set, each probed on its own anchors."""
    from tunelens.models.tuning import tune_on_pairs

    for n, j in enumerate(used):
        tuned = tune_on_pairs(loaded, prompts.tuning_sets[j], config)
        try:
            probe(j, tuned)
            if adapters_dir is not None:
                tuned.save(f"{adapters_dir}/set-{j}")
        finally:
            tuned.unload()
        if progress is not None:
            progress(n + 1, len(used))


def _similarities(
    h_anchor: np.ndarray, h_icl: np.ndarray, h_it: np.ndarray, task_names: list[str]
) -> dict[str, Any]:
    """Per pair and layer: raw, centered and standardized cosines with their mismatched-pair
    floors, and biased and debiased CKA (rounded as the store keeps them)."""
    pairs = {
        "icl_it": (h_icl, h_it),
        "anchor_icl": (h_anchor, h_icl),
        "anchor_it": (h_anchor, h_it),
    }
    mean, std = layer_moments(h_anchor, h_icl, h_it)
    measures: dict[str, dict[str, np.ndarray]] = {m: {} for m in MEASURES}
    cka: dict[str, np.ndarray] = {}
    cka_debiased: dict[str, np.ndarray] = {}
    for name, (x, y) in pairs.items():
        measures["cos"][name] = cosine_per_layer(x, y)
        measures["cos_centered"][name] = centered_cosine_per_layer(x, y, mean)
        measures["cos_standardized"][name] = standardized_cosine_per_layer(x, y, mean, std)
        measures["floor_raw"][name] = mismatched_floor_per_layer(x, y, task_names)
        measures["floor"][name] = mismatched_floor_per_layer(x, y, task_names, mean=mean)
        measures["floor_standardized"][name] = mismatched_floor_per_layer(
            x, y, task_names, mean=mean, std=std
        )
        cka[name] = linear_cka_per_layer(x, y)
        cka_debiased[name] = debiased_linear_cka_per_layer(x, y)
    return {
        **{m: {name: _rounded(v) for name, v in values.items()} for m, values in measures.items()},
        "cka": {name: _rounded(v) for name, v in cka.items()},
        "cka_debiased": {name: _rounded(v) for name, v in cka_debiased.items()},
    }


def _label_behaviour(
    prompts: CellPrompts, anchor: Reading, icl: Reading, tuned: Reading
) -> tuple[dict[str, Any], dict[str, tuple[list[np.ndarray], list[float]]]]:
    """The label distributions' KL divergences, answer agreement and label accuracy; and the
    readings (log-probabilities, hits) per condition that patching compares with."""
    readings = {
        name: _answer_readings(r.scores, prompts.labels, prompts.references, prompts.gold_first)
        for name, r in (("anchor", anchor), ("icl", icl), ("it", tuned))
    }
    lp_icl = readings["icl"][0]
    pairs = zip(icl.predictions, tuned.predictions, strict=True)
    behaviour = {
        "kl_icl_it": _rounded(np.array(_kl(lp_icl, readings["it"][0]))),
        "kl_icl_anchor": _rounded(np.array(_kl(lp_icl, readings["anchor"][0]))),
        "agree": [exact_match(a, [b]) / 100.0 for a, b in pairs],
        "label_correct": {name: hits for name, (_, hits) in readings.items()},
        "scoring": _scoring_note(prompts.labels),
    }
    return behaviour, readings


def _patched_readings(
    loaded,
    params: dict[str, Any],
    prompts: CellPrompts,
    icl: Reading,
    tuned: Reading,
    readings: dict[str, tuple[list[np.ndarray], list[float]]],
) -> dict[str, Any]:
    """The anchor forward with the ICL or the IT state patched in at each layer."""
    sources = {"icl": icl.scores.states, "it": tuned.scores.states}

    def patched(layer: int, source) -> tuple[list[np.ndarray], list[float]]:
        scores = prompts.score(loaded, patch_layer=layer, patch_states=source)
        return _answer_readings(scores, prompts.labels, prompts.references, prompts.gold_first)

    return _patching_cell(loaded, params, sources, patched, readings["icl"][0])


def _exact_matches(reading: Reading, prompts: CellPrompts) -> list[float]:
    """Exact match of each generated answer against its references."""
    pairs = zip(reading.predictions, prompts.references, strict=True)
    return [exact_match(answer, references) for answer, references in pairs]


def _cell_result(
    loaded,
    prompts: CellPrompts,
    conditions: tuple[Reading, Reading, Reading],
    similarities: dict[str, Any],
    behaviour: dict[str, Any],
    patching: dict[str, Any] | None,
    adapted: dict[str, Any],
) -> dict[str, Any]:
    """The cell's stored result, keys in their long-standing order."""
    from tunelens.models.layers import layer_labels

    anchor, icl, tuned = conditions
    n_layers = int(anchor.states.shape[1])
    readings = (("anchor", anchor), ("icl", icl), ("it", tuned))
    return {
        "n_pairs": len(prompts.anchor),
        "n_layers": n_layers,
        **similarities,
        "correct": {
            name: [
                exact_match(p, r) for p, r in zip(c.predictions, prompts.references, strict=True)
            ]
            for name, c in readings
        },
        # The generated answers per pair (references beside them), for reading what changed.
        "predictions": {name: c.predictions for name, c in readings},
        "references": [list(r) for r in prompts.references],
        "behaviour": behaviour,
        "patching": patching,
        "adapted": adapted,
        # issue 18 sanity: which stack each layer is, and how alike the pairs' states are
        "layer_labels": layer_labels(loaded, n_layers),
        "cross_pair_cos": cross_pair_readings(anchor.states, icl.states, tuned.states),
        "tasks": prompts.task_names,
        "sets": prompts.owners,
    }


def _arr(values: Any) -> np.ndarray:
    """A stored list as float64 (null, a non-finite value in the store, reads as NaN)."""
    return np.asarray(values, dtype=np.float64)


def _holm_from_layer_1(layers: list[dict[str, Any]], comp: str, pvalues: list[float]) -> None:
    """Holm over layers 1.. (layer 0, the embeddings, is reported but outside the family)."""
    layers[0]["wilcoxon"][comp]["p_holm"] = None
    for layer, p_holm in enumerate(holm(pvalues[1:]), start=1):
        layers[layer]["wilcoxon"][comp]["p_holm"] = float(p_holm)


def _test(x: np.ndarray, y: np.ndarray, clusters: Sequence[object]) -> Any:
    """One-sided paired Wilcoxon x > y on cluster means (per pair when clusters are pairs)."""
    return paired_wilcoxon_greater(cluster_means(x, clusters), cluster_means(y, clusters))


def _layer_stats(
    data: dict[str, dict[str, np.ndarray]], clusters: Sequence[object], seed: int
) -> list[dict[str, Any]]:
    """Per-layer means with cluster-bootstrap CIs and one-sided Wilcoxon tests.

    ``data[measure][pair]`` is ``[n_pairs, layers]`` (measures: ``cos`` and those of
    :data:`MEASURES` present). Tests run on cluster means (a cluster: one
    demonstration set of one seed), Holm-corrected over layers 1.. per comparison.
    """
    cos = data["cos"]
    n_layers = cos["icl_it"].shape[1]
    layers: list[dict[str, Any]] = []
    raw: dict[str, list[float]] = {}
    floors = "floor" in data and "cos_centered" in data
    for layer in range(n_layers):
        entry: dict[str, Any] = {"layer": layer}
        for measure in MEASURES:
            if measure not in data:
                continue
            for name in PAIRS:
                values = data[measure][name][:, layer]
                entry[f"{measure}_{name}"] = cluster_mean_ci(values, clusters, seed=seed)
        entry["wilcoxon"] = {}
        tests = {comp: (cos[x][:, layer], cos[y][:, layer]) for comp, (x, y) in COMPARISONS.items()}
        if floors:
            for comp, pair in FLOOR_COMPARISONS.items():
                tests[comp] = (data["cos_centered"][pair][:, layer], data["floor"][pair][:, layer])
        for comp, (x, y) in tests.items():
            test = _test(x, y, clusters)
            raw.setdefault(comp, []).append(test.p)
            entry["wilcoxon"][comp] = {
                "statistic": float(test.statistic),
                "p": float(test.p),
                "effect": float(test.effect),
            }
        layers.append(entry)
    for comp, pvalues in raw.items():
        _holm_from_layer_1(layers, comp, pvalues)
    return layers


def condition_of(params: dict[str, Any]) -> dict[str, Any]:
    """The factor values that name a condition (seed excluded); ``tuning`` as a label."""
    condition = {
        key: params[key]
        for key in ("model", "k", "flip_fraction", "relevance", "definition", "control")
    }
    if isinstance(params.get("tuning"), dict):
        condition["tuning"] = tuning_label(params["tuning"])
    return condition


def _clusters(members: list[tuple[Cell, dict[str, Any]]]) -> list[tuple[int, int]]:
    """Cluster of each pooled pair: (seed, demonstration set); a pair alone without set ids."""
    out: list[tuple[int, int]] = []
    for cell, result in members:
        sets = result.get("sets") or list(range(result["n_pairs"]))
        out += [(cell.seed, int(j)) for j in sets]
    return out


def _pooled(members: list[tuple[Cell, dict[str, Any]]], key: str) -> dict[str, np.ndarray] | None:
    """``result[key][pair]`` concatenated over seeds, or None when a cell lacks it."""
    if not all(key in r for _, r in members):
        return None
    return {n: np.concatenate([_arr(r[key][n]) for _, r in members]) for n in PAIRS}


def _behaviour(
    members: list[tuple[Cell, dict[str, Any]]], clusters: Sequence[object]
) -> dict[str, Any] | None:
    """KL(ICL || IT), KL(ICL || anchor), ICL-IT agreement and label accuracies, with CIs.

    Cells hold per-row ``label_correct`` (code version 11 on); older cells read
    first tokens (``next_correct``) and are recomputed, never pooled with these.
    """
    if not all(r.get("behaviour") for _, r in members):
        return None

    def pooled(*path: str) -> np.ndarray:
        values = []
        for _, r in members:
            value: Any = r["behaviour"]
            for key in path:
                value = value[key]
            values.append(_arr(value))
        return np.concatenate(values)

    hits = {n: pooled("label_correct", n) * 100.0 for n in ("anchor", "icl", "it")}
    label_rows = sum(
        int(r["behaviour"].get("scoring", {}).get("label_rows", 0)) for _, r in members
    )
    first_rows = sum(
        int(r["behaviour"].get("scoring", {}).get("first_token_rows", 0)) for _, r in members
    )
    return {
        "scoring": {
            "method": SCORING_METHOD,
            "label_rows": label_rows,
            "first_token_rows": first_rows,
        },
        "kl_icl_it": cluster_mean_ci(pooled("kl_icl_it"), clusters),
        "kl_icl_anchor": cluster_mean_ci(pooled("kl_icl_anchor"), clusters),
        "agreement": cluster_mean_ci(pooled("agree"), clusters),
        "label_accuracy": {n: cluster_mean_ci(v, clusters) for n, v in hits.items()},
        # paired: > 0 where IT's label distribution is closer to ICL's than the anchor's is
        "kl_anchor_minus_it": cluster_mean_ci(
            pooled("kl_icl_anchor") - pooled("kl_icl_it"), clusters
        ),
        "icl_gain": cluster_mean_ci(hits["icl"] - hits["anchor"], clusters),
        "it_gain": cluster_mean_ci(hits["it"] - hits["anchor"], clusters),
    }


def _patching(
    members: list[tuple[Cell, dict[str, Any]]], clusters: Sequence[object]
) -> list[dict[str, Any]] | None:
    """Per layer and source: patched label accuracy, share of the ICL gain, KL to ICL."""
    if not all(r.get("patching") and r.get("behaviour") for _, r in members):
        return None
    layers = members[0][1]["patching"]["layers"]
    if any(r["patching"]["layers"] != layers for _, r in members):
        return None
    anchor = np.concatenate([_arr(r["behaviour"]["label_correct"]["anchor"]) for _, r in members])
    icl = np.concatenate([_arr(r["behaviour"]["label_correct"]["icl"]) for _, r in members])
    rows = []
    for source in PATCH_SOURCES:
        for i, layer in enumerate(layers):
            hits = np.concatenate([_arr(r["patching"][source]["correct"][i]) for _, r in members])
            kl = np.concatenate([_arr(r["patching"][source]["kl_to_icl"][i]) for _, r in members])
            rows.append(
                {
                    "layer": int(layer),
                    "source": source,
                    "accuracy": cluster_mean_ci(hits * 100.0, clusters),
                    "gain_share": gain_share(hits, anchor, icl, clusters),
                    "kl_to_icl": cluster_mean_ci(kl, clusters),
                }
            )
    return rows


def _seed_agreement(
    layers: list[dict[str, Any]], per_seed: list[dict[str, Any]], alpha: float = 0.05
) -> dict[str, Any]:
    """Per comparison: layers significant pooled (p_holm < alpha), and in each seed."""
    out: dict[str, Any] = {}
    for comp in layers[0]["wilcoxon"] if layers else []:

        def significant(rows: list[dict[str, Any]], comp: str = comp) -> list[int]:
            return [
                row["layer"]
                for row in rows
                if (p := row["wilcoxon"].get(comp, {}).get("p_holm")) is not None and p < alpha
            ]

        pooled = significant(layers)
        seeds = {str(s["seed"]): significant(s["layers"]) for s in per_seed}
        out[comp] = {
            "alpha": alpha,
            "pooled_layers": pooled,
            "per_seed_layers": seeds,
            "holds_in_every_seed": [
                layer for layer in pooled if all(layer in v for v in seeds.values())
            ],
        }
    return out


def aggregate_convergence(results: list[tuple[Cell, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One results.json entry per condition, pooled over seeds, with per-seed statistics.

    Pooled CIs are cluster bootstraps over (seed, demonstration set) and pooled
    tests run on cluster means, so pairs that share a tuned set are not
    counted as independent; per-seed tests stand beside the pooled ones.
    """
    groups: dict[str, list[tuple[Cell, dict[str, Any]]]] = {}
    for cell, result in results:
        key = repr(sorted(condition_of(cell.params).items()))
        groups.setdefault(key, []).append((cell, result))
    entries = []
    for members in groups.values():
        members.sort(key=lambda m: m[0].seed)
        clusters = _clusters(members)
        data = {m: v for m in MEASURES if (v := _pooled(members, m)) is not None}
        correct = {
            n: np.concatenate([_arr(r["correct"][n]) for _, r in members])
            for n in ("anchor", "icl", "it")
        }
        layers = _layer_stats(data, clusters, seed=0)
        for kind in ("cka", "cka_debiased"):
            if not all(kind in r for _, r in members):
                continue
            values = {n: np.mean([_arr(r[kind][n]) for _, r in members], axis=0) for n in PAIRS}
            for entry in layers:
                entry.update(
                    {f"{kind}_{n}": round(float(values[n][entry["layer"]]), 6) for n in PAIRS}
                )
        per_seed = []
        for cell, result in members:
            seed_data = {m: {n: _arr(result[m][n]) for n in PAIRS} for m in MEASURES if m in result}
            per_seed.append(
                {
                    "seed": cell.seed,
                    "n_pairs": result["n_pairs"],
                    "layers": _layer_stats(seed_data, _clusters([(cell, result)]), seed=cell.seed),
                }
            )
        entry_out: dict[str, Any] = {
            "condition": condition_of(members[0][0].params),
            "n_pairs": int(data["cos"]["icl_it"].shape[0]),
            "n_clusters": len(set(clusters)),
            "seeds": [cell.seed for cell, _ in members],
            "accuracy": {n: cluster_mean_ci(v, clusters) for n, v in correct.items()},
            "layers": layers,
            "per_seed": per_seed,
            "seed_agreement": _seed_agreement(layers, per_seed),
        }
        behaviour = _behaviour(members, clusters)
        if behaviour is not None:
            entry_out["behaviour"] = behaviour
        patching = _patching(members, clusters)
        if patching is not None:
            entry_out["patching"] = patching
        updates = aggregate_updates(members, clusters)
        if updates is not None:
            entry_out["update_similarity"] = updates
        adapted = members[0][1].get("adapted")
        if adapted is not None:
            entry_out["tuning"] = {
                **members[0][0].params.get("tuning", {}),
                "adapted_modules": list(adapted.get("modules") or []),
                "adapted": adapted,
            }
        annotate_layers(entry_out, [result for _, result in members])  # stacks, warnings
        entries.append(entry_out)
    _compare_k(entries, groups)
    compare_random_init(entries, list(groups.values()))
    from tunelens.experiments.convergence.results import dump_convergence

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
        mine = {cell.seed: _arr(r["cos"]["icl_it"]) for cell, r in members}
        theirs = {cell.seed: _arr(r["cos"]["icl_it"]) for cell, r in top_members}
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

    command_help = (
        "Does ICL move hidden states where instruction tuning does? Layer by layer, with stats."
    )

    name = "convergence"
    section_model = ConvergenceSpec

    def fill_section(self, section: ConvergenceSpec, study: Any) -> ConvergenceSpec:
        """What the section inherits from the study (:func:`fill_convergence`)."""
        return fill_convergence(section, study)

    # 3: cell keys hold task and model content digests; nested demonstration sets.
    # 4: calibrated similarity (centered, standardized, floors), debiased CKA,
    #    next-token behaviour, activation patching, adapted weights, set ids.
    # 5: cells keep the predicted text per pair.
    # 6: tuned sets probed together (batched LoRA): float noise moves.
    # 11: behaviour scored by each label's whole continuation (label_correct, label
    #     accuracy), not its first token. 10: last block cut at read positions, fused AdamW
    #     (float noise); earlier: 9: prefix groups only above the break-even; 8: last MLP
    #     at captured rows
    # 12: update-direction similarity (SimAOU on attention outputs and the residual stream,
    #     with floors; Rec2FTP at aggregation), attention outputs tapped in the same forwards.
    code_version = "12"
    results_model = ConvergenceResults

    def cells(self, section: ConvergenceSpec, inputs: StudyInputs) -> list[Cell]:
        tasks = inputs.tasks(section.tasks)
        digests = {"tasks": inputs.task_digest(section.tasks)}
        cells = []
        for model in section.models:
            cell_inputs = {**digests, "model": inputs.model_digest(model)}
            patching = section.patching if section.patching is not None else patching_default(model)
            for tuning, k, flip, relevance, definition, control, seed in itertools.product(
                section.tuning_variants(),
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
                    "tuning": tuning.model_dump(),
                    "patching": patching,
                    "patching_layers": section.patching_layers,
                }
                name = (
                    f"{model} k={k} flip={flip} {relevance} def={definition} {control} "
                    f"{tuning_label(tuning.model_dump())} seed={seed}"
                )
                cells.append(self.cell(name, params, seed, cell_inputs, {"tasks": tasks}))
        return cells

    # ------------------------------------------------------------ plan, --limit, preflight
    # (tunelens.experiments.convergence.plan). Seconds a cell costs beyond its counted work
    # (bench/plan_calibration.py: nothing measurable).
    cell_overhead_s = 0.0

    def limit_section(self, section: ConvergenceSpec, n: int) -> ConvergenceSpec:
        """At most n (set, anchor) pairs per seed, at least 2."""
        from tunelens.experiments.convergence.plan import limit_section

        return limit_section(section, n)

    def preflight(self, section: ConvergenceSpec, inputs: StudyInputs, source: str | None) -> None:
        """The demonstration draw at the largest k, before any model loads."""
        from tunelens.experiments.convergence.plan import preflight

        preflight(section, inputs, source)

    def plan_prompts(self, section: ConvergenceSpec, inputs: StudyInputs) -> list[str]:
        """The ICL prompts at the largest k, for the context check of ``tunelens plan``."""
        from tunelens.experiments.convergence.plan import plan_prompts

        return plan_prompts(section, inputs)

    def estimate_work(self, cell: Cell, estimate: Any) -> Any:
        """The cell's work for ``tunelens plan``, counted as the cell batches it."""
        from tunelens.experiments.convergence.plan import convergence_work

        return convergence_work(cell, estimate)

    def training_shape(self, cell: Cell) -> tuple[int, int] | None:
        """(batch, tokens per row) of the per-set tuning."""
        from tunelens.experiments.convergence.plan import training_shape

        return training_shape(cell)

    def plan_conditions(self, cells: list[Cell]) -> int:
        """Conditions the report aggregates: the cells' names without their seed."""
        from tunelens.experiments.convergence.plan import plan_conditions

        return plan_conditions(cells)

    def run_cell(self, cell: Cell, context: RunContext) -> dict[str, Any]:
        p = cell.params
        loaded = context.load_model(p["model"], dtype=p["dtype"], device=p["device"])

        def report(done: int, total: int) -> None:
            context.progress(f"tuning sets ({cell.name})", done, total)

        return run_convergence_cell(
            loaded,
            cell.data["tasks"],
            p,
            cell.seed,
            progress=report,
            adapters_dir=context.adapters_dir,
        )

    def aggregate(
        self, section: ConvergenceSpec, results: list[tuple[Cell, dict[str, Any]]]
    ) -> dict[str, Any]:
        return {"convergence": aggregate_convergence(results)}

    # ------------------------------------------------------------ export and report
    def tidy_rows(self, results: Mapping[str, Any]) -> list[dict[str, Any]]:
        """condition x seed x layer x measure (:mod:`tunelens.experiments.convergence.tidy`)."""
        from tunelens.experiments.convergence.tidy import tidy_rows

        return tidy_rows(results)

    def report_part(self, results: Mapping[str, Any], plots_dir: Any) -> ReportPart | None:
        """One block and figure per condition (:mod:`tunelens.experiments.convergence.report`)."""
        from tunelens.experiments.convergence.report import report_part

        return report_part(results, plots_dir)
