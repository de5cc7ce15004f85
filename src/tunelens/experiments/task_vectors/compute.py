"""One task-vector cell: a task's dev and test sets, read zero-shot, with ICL, and patched.

For each set (one query, k demonstrations, ``dummy_queries`` dummies; see
:mod:`tunelens.experiments.task_vectors.sets`):

- **zero-shot**: the query alone; **ICL**: the k demonstrations, then the query.
- **ICL task vector** (Hendel et al. 2023): the last-token state, at every layer,
  of the k demonstrations followed by each dummy query, averaged over the
  dummies (``[sets, layers, hidden]``).
- **IT task vector**: the model tuned on the same k demonstrations (the
  project's per-set tuning, one LoRA adapter per set trained in lockstep, as
  the convergence study tunes), read on each *zero-shot* dummy-query prompt and
  averaged over the dummies: the state tuning leaves at the last token when no
  demonstration is in the prompt. It is patched into the *untuned* model, so ICL
  and IT vectors are compared in the same host forward. The tuned model's own
  zero-shot accuracy on the query (``it``) comes alongside.
- **patched**: for every layer L swept, the untuned model's zero-shot forward of
  the query with its last-token state after block L replaced by the set's task
  vector at L (:func:`tunelens.models.scoring.score_label_continuations`, the
  label continuations reading the patch through the cache).

Every reading is label accuracy: the argmax over the task's labels of each
label's summed continuation log-likelihood, correct when it is a reference
under exact match's normalisation. The random-init control runs all of it on
a freshly initialised copy of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tunelens.errors import TunelensInputError
from tunelens.experiments.task_vectors.sets import QuerySet, draw_sets
from tunelens.measures.text import exact_match
from tunelens.models.loading import LoadedModel
from tunelens.prompts import PromptStyle, render_prompt, render_target
from tunelens.spec import TuningSpec
from tunelens.tasks.types import Task

__all__ = [
    "PROBE_ROWS",
    "CellPrompts",
    "check_causal",
    "icl_task_vectors",
    "patched_hits",
    "patched_scores",
    "run_task_vector_cell",
]

# Rows read together under the batched LoRA stack (one adapter per row).
PROBE_ROWS = 64
SOURCES = ("icl", "it")


def check_causal(loaded: LoadedModel) -> None:
    """Task vectors are read at a causal LM's last prompt token: an encoder-decoder is an
    input error (exit 2)."""
    if loaded.kind != "causal":
        raise TunelensInputError(
            f"task vectors are for causal language models; {loaded.name} is an encoder-decoder",
            where="task_vectors.models",
        )


@dataclass
class CellPrompts:
    """A cell's prompts, built once from its sets: row i is set i."""

    sets: list[QuerySet]
    task: str
    labels: list[str]
    zero_shot: list[str]
    icl: list[str]
    dummy_icl: list[str]  # set-major: set i's dummies are rows i*d .. i*d + d - 1
    dummy_zero_shot: list[str]
    tuning: list[list[tuple[str, str]]]  # per set: the (prompt, target) pairs IT trains on
    dummies: int

    @classmethod
    def build(cls, task: Task, sets: list[QuerySet], style: PromptStyle, tokenizer: Any) -> Any:
        """Render every prompt of ``sets`` (the chat template through ``tokenizer``)."""

        def prompt(query: str, demos: Sequence[Any]) -> str:
            return render_prompt(task, query, list(demos), style, tokenizer)

        return cls(
            sets=sets,
            task=task.name,
            labels=list(task.labels or ()),
            zero_shot=[prompt(s.query.input, []) for s in sets],
            icl=[prompt(s.query.input, s.demos) for s in sets],
            dummy_icl=[prompt(d.input, s.demos) for s in sets for d in s.dummies],
            dummy_zero_shot=[prompt(d.input, []) for s in sets for d in s.dummies],
            tuning=[
                [(prompt(d.input, []), render_target(d.output)) for d in s.demos] for s in sets
            ],
            dummies=len(sets[0].dummies) if sets else 0,
        )

    def score(self, loaded: LoadedModel, prompts: Sequence[str], **kwargs: Any) -> Any:
        """Label scores of ``prompts`` (row i: set i's query) over the task's labels
        (``kwargs``: patching, batching)."""
        from tunelens.models.scoring import score_label_continuations

        n = len(prompts)
        if n != len(self.sets):
            raise ValueError(f"{n} prompts for {len(self.sets)} sets")
        return score_label_continuations(
            loaded, prompts, [self.labels] * n, tasks=[self.task] * n, **kwargs
        )

    def hits_of(self, scores: Any) -> list[float]:
        """Per set, 1.0 where the best-scored label is a reference of its query, else 0.0."""
        out = []
        for i, s in enumerate(self.sets):
            best = self.labels[int(np.argmax(scores.log_distribution(i)))]
            out.append(1.0 if exact_match(best, s.query.outputs) == 100.0 else 0.0)
        return out

    def hits(self, loaded: LoadedModel, prompts: Sequence[str], **kwargs: Any) -> list[float]:
        """:meth:`hits_of` the scores of ``prompts``."""
        return self.hits_of(self.score(loaded, prompts, **kwargs))


def mean_over_dummies(states: torch.Tensor, dummies: int) -> torch.Tensor:
    """``[sets * dummies, layers, hidden]`` (set-major) averaged to ``[sets, layers, hidden]``."""
    return states.reshape(-1, dummies, *states.shape[1:]).mean(dim=1)


def icl_task_vectors(loaded: LoadedModel, prompts: CellPrompts) -> torch.Tensor:
    """Each set's ICL task vector at every layer: the mean over its dummy queries of the
    last-token state of demonstrations + dummy (block outputs, as patching replaces them)."""
    from tunelens.models.patching import last_token_forward

    states = last_token_forward(loaded, prompts.dummy_icl).states
    return mean_over_dummies(states, prompts.dummies)


def patched_scores(
    loaded: LoadedModel, prompts: CellPrompts, vectors: torch.Tensor, layer: int
) -> Any:
    """Label scores (:class:`~tunelens.models.scoring.LabelScores`) of every set's zero-shot
    query with its task vector patched in at its last token after ``layer``."""
    return prompts.score(loaded, prompts.zero_shot, patch_layer=layer, patch_states=vectors)


def patched_hits(
    loaded: LoadedModel, prompts: CellPrompts, vectors: torch.Tensor, layer: int
) -> list[float]:
    """Zero-shot hits of every set's query with its task vector patched in after ``layer``."""
    return prompts.hits_of(patched_scores(loaded, prompts, vectors, layer))


def _tuned_lora(
    loaded: LoadedModel, prompts: CellPrompts, config: TuningSpec
) -> tuple[torch.Tensor, list[float]]:
    """One adapter per set (lockstep), then per row its own set's adapter: the dummy
    prompts' last-token states, averaged per set, and each set's query scored zero-shot."""
    from tunelens.models.patching import last_token_forward
    from tunelens.models.tuning import tune_many_sets
    from tunelens.models.tuning.many_sets import batched_lora
    from tunelens.models.tuning.targets import resolve_target_modules, target_module_names

    adapters = tune_many_sets(loaded, prompts.tuning, config)
    names = target_module_names(
        loaded.model, resolve_target_modules(loaded.model, config.target_modules)
    )
    d = prompts.dummies

    def under_adapters(texts: list[str], owner: Callable[[int], int], read: Callable) -> list:
        parts = []
        for start in range(0, len(texts), PROBE_ROWS):
            chunk = texts[start : start + PROBE_ROWS]
            states = [adapters[owner(start + i)] for i in range(len(chunk))]
            with batched_lora(loaded.model, names, states, config) as layers:
                for layer in layers:
                    layer.eval()  # no LoRA dropout when reading (PEFT's eval mode)
                parts.append(read(chunk, start))
        return parts

    states = under_adapters(
        prompts.dummy_zero_shot,
        lambda row: row // d,
        lambda chunk, _: last_token_forward(loaded, chunk, batch_size=len(chunk)).states,
    )
    hits = under_adapters(
        prompts.zero_shot,
        lambda row: row,
        lambda chunk, start: _hits_of_rows(loaded, prompts, chunk, start),
    )
    return mean_over_dummies(torch.cat(states), d), [h for part in hits for h in part]


def _hits_of_rows(
    loaded: LoadedModel, prompts: CellPrompts, chunk: list[str], start: int
) -> list[float]:
    """Hits of sets ``start ..`` on ``chunk`` in one fixed batch (lined up with a LoRA stack)."""
    view = CellPrompts(
        sets=prompts.sets[start : start + len(chunk)],
        task=prompts.task,
        labels=prompts.labels,
        zero_shot=chunk,
        icl=[],
        dummy_icl=[],
        dummy_zero_shot=[],
        tuning=[],
        dummies=prompts.dummies,
    )
    return view.hits(loaded, chunk, batch_size=len(chunk))


def _tuned_full(
    loaded: LoadedModel, prompts: CellPrompts, config: TuningSpec
) -> tuple[torch.Tensor, list[float]]:
    """Full fine-tuning: one tuned copy per set, read on its own dummies and query."""
    from tunelens.models.patching import last_token_forward
    from tunelens.models.tuning import tune_on_pairs

    d = prompts.dummies
    states, hits = [], []
    for i, pairs in enumerate(prompts.tuning):
        tuned = tune_on_pairs(loaded, pairs, config)
        try:
            probe = tuned.as_loaded()
            dummy_prompts = prompts.dummy_zero_shot[i * d : i * d + d]
            states.append(last_token_forward(probe, dummy_prompts).states)
            hits += _hits_of_rows(probe, prompts, prompts.zero_shot[i : i + 1], i)
        finally:
            tuned.unload()
    return mean_over_dummies(torch.cat(states), d), hits


def it_task_vectors(
    loaded: LoadedModel, prompts: CellPrompts, config: TuningSpec
) -> tuple[torch.Tensor, list[float]]:
    """Each set's IT task vector ``[sets, layers, hidden]`` and the tuned models' own hits."""
    if config.method == "lora":
        return _tuned_lora(loaded, prompts, config)
    return _tuned_full(loaded, prompts, config)


def cell_layers(loaded: LoadedModel, wanted: Sequence[int]) -> list[int]:
    """The layers swept: those asked for that the model has; when none, the output of every
    block (1 .. blocks), Hendel et al.'s sweep. Layer 0 (the embeddings) only when asked for:
    the zero-shot and dummy prompts end in the same token, so a patch there changes nothing."""
    from tunelens.models.patching import n_patch_layers

    n = n_patch_layers(loaded)
    return [layer for layer in (wanted or range(1, n)) if layer < n]


def run_task_vector_cell(
    loaded: LoadedModel, task: Task, params: dict[str, Any], seed: int
) -> dict[str, Any]:
    """One (model, control, task, seed): per set its hits zero-shot, with ICL, under IT, and
    patched with each source's task vector at every layer swept (see the module doc)."""
    from tunelens.models.controls import random_init_like
    from tunelens.models.layers import layer_labels

    check_causal(loaded)
    if params["control"] == "random_init":
        loaded = random_init_like(loaded, seed=10_000 + seed)
    sets = draw_sets(
        task,
        k=params["k"],
        dummy_queries=params["dummy_queries"],
        dev_sets=params["dev_sets"],
        test_sets=params["test_sets"],
        seed=seed,
    )
    style = PromptStyle(template=params["template"], definition=params["definition"], n_positive=0)
    prompts = CellPrompts.build(task, sets, style, loaded.tokenizer)
    layers = cell_layers(loaded, params.get("layers") or [])
    correct = {"zero_shot": prompts.hits(loaded, prompts.zero_shot)}
    correct["icl"] = prompts.hits(loaded, prompts.icl)
    vectors = {"icl": icl_task_vectors(loaded, prompts)}
    if params.get("it_vectors"):
        config = TuningSpec(**params["tuning"], seed=seed)
        vectors["it"], correct["it"] = it_task_vectors(loaded, prompts, config)
    patched = {
        source: [patched_hits(loaded, prompts, vector, layer) for layer in layers]
        for source, vector in vectors.items()
    }
    n_layers = int(vectors["icl"].shape[1])
    return {
        "task": task.name,
        "splits": [s.split for s in sets],
        "layers": layers,
        "n_layers": n_layers,
        "layer_labels": layer_labels(loaded, n_layers),
        "correct": correct,
        "patched": patched,
        "forwards": forward_counts(len(sets), prompts.dummies, len(layers), list(vectors)),
    }


def forward_counts(n_sets: int, dummies: int, n_layers: int, sources: list[str]) -> dict[str, int]:
    """Prompt forwards of a cell by reading (each a whole prompt through the model; a label
    of several tokens adds one short continuation forward per token on the prompt's cache)."""
    counts = {
        "zero_shot": n_sets,
        "icl": n_sets,
        "icl_vector_states": n_sets * dummies,
        "patched": n_sets * n_layers * len(sources),
    }
    if "it" in sources:
        counts["it_vector_states"] = n_sets * dummies
        counts["it_zero_shot"] = n_sets
    counts["total"] = sum(counts.values())
    return counts
