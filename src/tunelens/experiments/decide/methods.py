"""The methods ``decide`` measures, as cells: one model computation each, cached in the run dir.

Every method answers the same test set:

* ``zero_shot``: the base model, prompt without demonstrations;
* ``icl_k{k}``: the base model with the first k examples of the demonstration pool;
* ``tune_n{n}``: a model tuned (LoRA by default) on the first n examples of the
  tuning pool, prompted zero-shot;
* ``control_simplified``: tuned on the same examples as the largest tuning size,
  but with a definition that states only the output space;
* ``control_delusive``: tuned on them with wrong labels (each example gets
  another label of the space);
* ``similarity``: ICL-IT hidden states at one k (the base model with k
  demonstrations vs the model tuned on those same k, on the zero-shot prompt).

The label-space guess needs no model and is computed from the test set.

Tuned models see exactly the prompt format they are evaluated with (zero-shot,
the original definition), as in the audit; the controls change only what they
are tuned on. A cell's key covers the task's content and the model's files (as
digests, see :mod:`tunelens.experiments.decide.experiment`), the split settings and the
method's own settings, so a re-run skips finished cells and a changed input
recomputes only what it affects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunelens.api import Cell
from tunelens.experiments.decide.config import DecideConfig
from tunelens.experiments.decide.split import Split, label_of
from tunelens.models.loading import LoadedModel
from tunelens.prompts import PromptStyle, render_prompt, render_target
from tunelens.tasks.sampling import first_examples
from tunelens.tasks.types import Example, Task

EXPERIMENT = "decide"


@dataclass(frozen=True)
class Method:
    """One measured method: its id, family, examples used and its cell."""

    id: str
    family: str  # zero_shot | icl | tuning | control | similarity
    name: str
    examples: int
    cell: Cell
    settings: dict[str, Any] = field(default_factory=dict, hash=False)


def prompt_style(config: DecideConfig) -> PromptStyle:
    return PromptStyle(template=config.template, definition=config.definition, n_positive=0)


def common_params(split: Split, config: DecideConfig, model: str) -> dict[str, Any]:
    """The settings every method's cell depends on (the split's and the prompts')."""
    return {
        "model": model,
        "seed": config.seed,
        "test_size": config.test_size,
        "demo_size": len(split.demo_pool),
        "template": config.template,
        "definition": config.definition,
        "predict": config.predict,
        "max_new_tokens": config.max_new_tokens,
    }


def plan_methods(
    task: Task, split: Split, config: DecideConfig, model: str
) -> tuple[list[Method], list[str]]:
    """The methods to run (without similarity, whose k depends on ICL results) and notes on
    what was skipped and why."""
    common = common_params(split, config, model)
    notes: list[str] = []
    zero_shot = Cell(EXPERIMENT, "zero-shot", {**common, "method": "zero_shot"}, config.seed)
    methods = [Method("zero_shot", "zero_shot", "zero-shot", 0, zero_shot)]
    methods += _icl_methods(split, config, common, notes)
    sizes = _tuning_sizes(split, config, notes)
    tuning = config.tuning.model_dump()
    for n, label in sizes:
        params = {**common, "method": "tune", "n": n, "tuning": tuning}
        cell = Cell(EXPERIMENT, f"tune n={n}", params, config.seed)
        methods.append(Method(f"tune_n{n}", "tuning", f"tuned, {label}", n, cell))
    if config.controls and sizes:
        methods += _control_methods(config, common, sizes[-1], notes)
    elif config.controls:
        notes.append("the format-only controls are skipped: no tuning size was measured")
    return methods, notes


def _icl_methods(
    split: Split, config: DecideConfig, common: dict[str, Any], notes: list[str]
) -> list[Method]:
    """ICL at each k the demonstration pool can serve (a note for each it cannot)."""
    methods = []
    for k in config.k:
        if k > len(split.demo_pool):
            notes.append(
                f"ICL k={k} skipped: the demonstration pool holds {len(split.demo_pool)} examples"
            )
            continue
        cell = Cell(EXPERIMENT, f"icl k={k}", {**common, "method": "icl", "k": k}, config.seed)
        methods.append(Method(f"icl_k{k}", "icl", f"ICL, k={k}", k, cell))
    return methods


def _tuning_sizes(split: Split, config: DecideConfig, notes: list[str]) -> list[tuple[int, str]]:
    """(n, label) of each tuning size the tuning pool can serve, each once ("all" included)."""
    pool = len(split.tuning_pool)
    sizes: list[tuple[int, str]] = []
    for size in config.tune_sizes:
        n = pool if size == "all" else int(size)
        label = f"n=all ({pool})" if size == "all" else f"n={n}"
        if n == 0 or n > pool:
            notes.append(f"tuning {label} skipped: the tuning pool holds {pool} examples")
            continue
        if any(n == m for m, _ in sizes):
            notes.append(f"tuning {label} is the same as tuning n={n}; measured once")
            continue
        sizes.append((n, label))
    return sizes


def _control_methods(
    config: DecideConfig, common: dict[str, Any], largest: tuple[int, str], notes: list[str]
) -> list[Method]:
    """The format-only controls at the largest tuning size: the simplified definition (only
    where prompts show one) and delusive examples."""
    n, label = largest
    controls = [
        ("simplified", "tuned with the simplified definition"),
        ("delusive", "tuned on delusive examples"),
    ]
    if not config.definition:
        notes.append(
            "the simplified-definition control is skipped: prompts show no "
            "definition (--no-definition), so it would equal plain tuning"
        )
        controls = controls[1:]
    tuning = config.tuning.model_dump()
    methods = []
    for variant, text in controls:
        params = {**common, "method": "control", "variant": variant, "n": n, "tuning": tuning}
        cell = Cell(EXPERIMENT, f"control {variant} n={n}", params, config.seed)
        methods.append(
            Method(
                f"control_{variant}", "control", f"{text}, {label}", n, cell, {"variant": variant}
            )
        )
    return methods


def similarity_method(task: Task, split: Split, config: DecideConfig, model: str, k: int) -> Method:
    common = common_params(split, config, model)
    params = {
        **common,
        "method": "similarity",
        "k": k,
        "items": config.similarity_items,
        "tuning": config.tuning.model_dump(),
    }
    return Method(
        "similarity",
        "similarity",
        f"ICL-IT similarity, k={k}",
        k,
        Cell(EXPERIMENT, f"similarity k={k}", params, config.seed),
    )


# ---------------------------------------------------------------- computing one cell


def _token_counts(loaded: LoadedModel, texts: Sequence[str]) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in loaded.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]


def answer_tokens(loaded: LoadedModel, references: Sequence[str]) -> float:
    """Mean tokens of the answers (``" " + label``) plus one stop token."""
    ids = loaded.tokenizer([render_target(r) for r in references], add_special_tokens=False)[
        "input_ids"
    ]
    return float(np.mean([len(i) for i in ids]) + 1.0) if references else 0.0


def default_max_new_tokens(loaded: LoadedModel, labels: Sequence[str]) -> int:
    """Enough tokens for the longest label, and two to spare."""
    ids = loaded.tokenizer([render_target(label) for label in labels], add_special_tokens=False)[
        "input_ids"
    ]
    return max(len(i) for i in ids) + 2


#: The answer when two or more labels share the best score (labels that tokenise alike, such
#: as emoji that all become the unknown token): no label is chosen, so the item counts as
#: wrong and out of the label space, instead of silently going to the first label.
TIED = "(no answer: labels tied)"
_warned: set[tuple[int, tuple[str, ...]]] = set()


def best_label(scores: np.ndarray, labels: Sequence[str]) -> str:
    """The label with the highest score, or :data:`TIED` when the best score is shared."""
    best = float(np.max(scores))
    winners = np.flatnonzero(np.isclose(scores, best, rtol=1e-9, atol=1e-9))
    return labels[int(winners[0])] if len(winners) == 1 else TIED


def warn_unknown_tokens(loaded: LoadedModel, labels: Sequence[str]) -> None:
    """Warn (once per model and label space) when a label tokenises to the unknown token: the
    model cannot write it, and under ``--predict score`` labels that tokenise alike tie."""
    from tunelens.terminal import warn

    unk = getattr(loaded.tokenizer, "unk_token_id", None)
    key = (id(loaded.tokenizer), tuple(labels))
    if unk is None or key in _warned:
        return
    _warned.add(key)
    ids = loaded.tokenizer([render_target(label) for label in labels], add_special_tokens=False)[
        "input_ids"
    ]
    unknown = [label for label, row in zip(labels, ids, strict=True) if unk in row]
    if unknown:
        alike = len({tuple(row) for row in ids}) < len(ids)
        warn(
            f"label(s) {', '.join(map(repr, unknown))} tokenise to the unknown token "
            f"{loaded.tokenizer.unk_token!r} of this model: it cannot score or write them"
            + ("; labels that tokenise alike tie and count as no answer" if alike else "")
        )


def predict(
    loaded: LoadedModel,
    prompts: Sequence[str],
    labels: Sequence[str],
    config: DecideConfig,
    output_ids: list[list[int]] | None = None,
) -> list[str]:
    """Greedy answers, or the best-scoring label (``config.predict``); ``output_ids``
    (given) receives the generated token ids of each greedy answer."""
    from tunelens.models.predict import generate_predictions
    from tunelens.models.scoring import score_labels

    warn_unknown_tokens(loaded, labels)
    if config.predict == "score":
        scores = score_labels(loaded, list(prompts), list(labels), include_eos=True)
        return [best_label(row, labels) for row in scores]
    max_new = config.max_new_tokens or default_max_new_tokens(loaded, labels)
    return generate_predictions(
        loaded, list(prompts), max_new_tokens=max_new, output_ids=output_ids
    )


def training_pairs(
    task: Task, examples: Sequence[Example], style: PromptStyle, tokenizer: Any
) -> list[tuple[str, str]]:
    """Zero-shot (prompt, target) pairs: what a tuned model is trained on and asked."""
    return [
        (render_prompt(task, e.input, [], style, tokenizer), render_target(e.output))
        for e in examples
    ]


def _train_record(
    loaded: LoadedModel, pairs: Sequence[tuple[str, str]], tuned: Any, tuning: Any
) -> dict[str, Any]:
    """Tokens per training pair and how often the schedule used each (for the FLOP count)."""
    from tunelens.experiments.decide.compute import pair_uses
    from tunelens.models.batching import context_length, encode_pairs
    from tunelens.models.tuning import step_batches

    encoded = encode_pairs(
        loaded.tokenizer,
        pairs,
        kind=loaded.kind,
        add_eos=tuning.add_eos,
        max_length=context_length(loaded.model),
    )
    steps = step_batches(len(pairs), tuning)
    return {
        "pairs": len(pairs),
        "pair_tokens": [len(e.prompt_ids) + len(e.target_ids) for e in encoded],
        "uses": pair_uses(len(pairs), steps),
        "steps": tuned.steps,
        "final_loss": round(tuned.losses[-1], 6) if tuned.losses else None,
        "adapted_modules": tuned.adapted_modules,
        "adapted": tuned.adapted,
    }


def run_method(
    method: Method,
    loaded: LoadedModel,
    task: Task,
    split: Split,
    config: DecideConfig,
    adapters_dir: str | None = None,
) -> dict[str, Any]:
    """Compute one method's cell: predictions on the test set, prompt tokens, training record.

    ``adapters_dir`` (``--save-adapters``) receives a tuned method's adapter.
    """
    from tunelens.models.tuning import tune_set
    from tunelens.tasks.variants import delusive_examples, simplified_definition

    labels = list(task.labels or ())
    style = prompt_style(config)
    tokenizer = loaded.tokenizer
    test = split.test
    zero_shot = [render_prompt(task, i.input, [], style, tokenizer) for i in test]
    result: dict[str, Any] = {"answer_tokens": answer_tokens(loaded, [label_of(i) for i in test])}
    if method.family in ("zero_shot", "icl"):
        demos = first_examples(split.demo_pool, method.examples, what="demonstration pool")
        prompts = (
            zero_shot
            if method.family == "zero_shot"
            else [render_prompt(task, i.input, demos, style, tokenizer) for i in test]
        )
        result["predictions"] = predict(loaded, prompts, labels, config)
        result["prompt_tokens"] = _token_counts(loaded, prompts)
        return result
    if method.family == "similarity":
        return _run_similarity(method, loaded, task, split, config)
    examples = first_examples(split.tuning_pool, method.examples, what="tuning pool")
    train_task = task
    variant = method.settings.get("variant")
    if variant == "simplified":
        train_task = simplified_definition(task)
    elif variant == "delusive":
        examples = delusive_examples(examples, labels, f"decide-delusive|{config.seed}")
    pairs = training_pairs(train_task, examples, style, tokenizer)
    tuning = config.tuning.with_seed(config.seed)
    tuned = tune_set(loaded, pairs, tuning)
    outputs: list[list[int]] = []
    try:
        result["predictions"] = predict(tuned.as_loaded(), zero_shot, labels, config, outputs)
        result["train"] = _train_record(loaded, pairs, tuned, tuning)
        if adapters_dir is not None:
            tuned.save(adapters_dir)
    finally:
        tuned.unload()
    result["prompt_tokens"] = _token_counts(loaded, zero_shot)
    if config.predict == "generate":  # the untuned model's ranks along the tuned answers
        from tunelens.experiments.decide.token_shift import token_rank_record

        result["token_ranks"] = token_rank_record(loaded, zero_shot, outputs, labels)
    return result


def _run_similarity(
    method: Method, loaded: LoadedModel, task: Task, split: Split, config: DecideConfig
) -> dict[str, Any]:
    """Hidden states at the last prompt token, per layer: anchor (zero-shot), ICL (k demos),
    IT (tuned on the same k demos, zero-shot prompt); per-item cosines and accuracies."""
    from tunelens.measures.sanity import cross_pair_readings
    from tunelens.measures.similarity import cosine_per_layer
    from tunelens.models.hidden_states import capture_packed
    from tunelens.models.layers import layer_labels
    from tunelens.models.tuning import tune_set

    labels = list(task.labels or ())
    style = prompt_style(config)
    tokenizer = loaded.tokenizer
    items = split.test[: config.similarity_items]
    demos = first_examples(split.demo_pool, method.examples, what="demonstration pool")
    anchor = [render_prompt(task, i.input, [], style, tokenizer) for i in items]
    icl = [render_prompt(task, i.input, demos, style, tokenizer) for i in items]
    # Every ICL prompt starts with the same demonstrations (every prompt with the same
    # definition): packed rows compute those tokens once.
    h_anchor = capture_packed(loaded, anchor).numpy()
    h_icl = capture_packed(loaded, icl).numpy()
    pred_anchor = predict(loaded, anchor, labels, config)
    pred_icl = predict(loaded, icl, labels, config)
    tuned = tune_set(
        loaded, training_pairs(task, demos, style, tokenizer), config.tuning.with_seed(config.seed)
    )
    try:
        h_it = capture_packed(tuned.as_loaded(), anchor).numpy()
        pred_it = predict(tuned.as_loaded(), anchor, labels, config)
    finally:
        tuned.unload()
    cos = {
        "icl_it": cosine_per_layer(h_icl, h_it),
        "anchor_icl": cosine_per_layer(h_anchor, h_icl),
        "anchor_it": cosine_per_layer(h_anchor, h_it),
    }
    return {
        "k": method.examples,
        "n_items": len(items),
        "n_layers": int(h_anchor.shape[1]),
        "layer_labels": layer_labels(loaded, int(h_anchor.shape[1])),
        "cross_pair_cos": cross_pair_readings(h_anchor, h_icl, h_it),
        "cos": {name: np.round(v, 7).tolist() for name, v in cos.items()},
        "predictions": {"anchor": pred_anchor, "icl": pred_icl, "it": pred_it},
    }


def resolve_model_name(name: str) -> str:
    """A world model name stays; a directory is made absolute (cell keys ignore the cwd)."""
    from tunelens.models.checks import check_model_path
    from tunelens.models.paths import is_world_model

    if is_world_model(name):
        return name
    check_model_path(name)  # resolve() raises RuntimeError on a symlink loop
    return str(Path(name).expanduser().resolve())
