"""Issue 26's done-when: a random model reads chance on task1344 on every tokenizer.

``task1344_glue_entailment_classification`` (SuperNI, labels ``0`` / ``1``) is
where first-token scoring collapsed: under the Mistral and Qwen2 tokenizers
``" 0"`` and ``" 1"`` start with the same space piece, so a *random* model read
100% next-token accuracy and KL(ICL || IT) = 0. A small convergence cell on a
tiny random model over each genuine tokenizer (and the world tokenizer) must
now read a label accuracy whose 95% CI contains 50 and a KL(ICL || IT) that is
not 0, and its per-pair readings must equal the test's own full-string
computation (tests/integration/test_label_scoring.py's ``reference_score``).

Sizes and seed: 16 pairs in 8 demonstration sets (2 anchors each), k = 1
(task1344 prompts run to 150 tokens), one tuning epoch, seed 3: about 15-45 s
per tokenizer on 2 busy CPU cores. A random model's readings are
deterministic, so "CI contains 50" is a property of this draw, not a guarantee:
a chance-level model falls outside a 95% CI in about one draw in twenty, more
often with few clusters (seed 0 with 24 pairs, 3 anchors per set, put the
Mistral model's anchor at 75% [67, 88], 18 of 24). The draw below was checked
on every tokenizer; what holds for any draw is asserted too: the per-pair
readings equal the full-string computation, every row has both labels, and
KL(ICL || IT) > 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.integration.test_label_scoring import reference_score

import tunelens.models.scoring as scoring
from tunelens.api import Cell
from tunelens.experiments.convergence import aggregate_convergence, run_convergence_cell
from tunelens.models.loading import load_model
from tunelens.spec import TuningSpec

TASK = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "superni"
    / "tasks"
    / "test"
    / "task1344_glue_entailment_classification.json"
)
PARAMS = {
    "control": "none",
    "n_pairs": 16,
    "anchors_per_set": 2,
    "k": 1,
    "relevance": "same",
    "flip_fraction": 0.0,
    "template": "plain",
    "definition": False,
    "tuning": TuningSpec(epochs=1, batch_size=2).model_dump(),
    "patching": True,
    "patching_layers": [1],
    "max_new_tokens": 1,
}
SEED = 3


@pytest.fixture(scope="module")
def task1344():
    from tunelens.tasks.loaders import load_tasks

    if not TASK.is_file():
        pytest.skip(f"the shared SuperNI subset is absent: {TASK} not found")
    return load_tasks(TASK)


def _spy(monkeypatch) -> list[tuple[list[str], list[list[str]]]]:
    """Record the prompts and labels of every base-model scoring call of the cell."""
    calls: list[tuple[list[str], list[list[str]]]] = []
    real = scoring.score_label_continuations

    def spy(loaded, prompts, labels, **kwargs):
        if kwargs.get("patch_layer") is None:
            calls.append((list(prompts), [list(row) for row in labels]))
        return real(loaded, prompts, labels, **kwargs)

    monkeypatch.setattr(scoring, "score_label_continuations", spy)
    return calls


def _own_readings(loaded, prompts, labels, references):
    """Per row: log label distribution and hit, from full-string forwards written in the test."""
    logps, hits = [], []
    for prompt, row, refs in zip(prompts, labels, references, strict=True):
        summed = np.array([reference_score(loaded, prompt, label) for label in row])
        logp = summed - np.logaddexp.reduce(summed)
        logps.append(logp)
        hits.append(1.0 if row[int(np.argmax(logp))] in refs else 0.0)
    return logps, hits


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mistral", "gpt2", "qwen2", "world"])
def test_random_model_reads_chance_on_task1344(task1344, real_model_dir, monkeypatch, name):
    loaded = load_model(str(real_model_dir(name)))
    calls = _spy(monkeypatch)
    params = {**PARAMS, "model": name}
    result = run_convergence_cell(loaded, task1344, params, seed=SEED)
    (entry,) = aggregate_convergence([(Cell("convergence", name, params, SEED), result)])
    behaviour = entry["behaviour"]
    assert behaviour["scoring"]["label_rows"] == result["n_pairs"] == 16
    for forward in ("anchor", "icl", "it"):
        lo, hi = behaviour["label_accuracy"][forward]["ci"]
        assert lo <= 50.0 <= hi, (forward, behaviour["label_accuracy"][forward])
    assert behaviour["kl_icl_it"]["mean"] > 1e-6
    assert min(result["behaviour"]["kl_icl_anchor"]) >= 0

    # the cell's anchor and ICL readings are the test's own full-string computation
    (anchor_prompts, labels), (icl_prompts, _) = calls[:2]
    assert all(row == ["0", "1"] for row in labels)
    references = result["references"]
    lp_anchor, hits_anchor = _own_readings(loaded, anchor_prompts, labels, references)
    lp_icl, hits_icl = _own_readings(loaded, icl_prompts, labels, references)
    assert result["behaviour"]["label_correct"]["anchor"] == hits_anchor
    assert result["behaviour"]["label_correct"]["icl"] == hits_icl
    kl = [float(np.sum(np.exp(p) * (p - q))) for p, q in zip(lp_icl, lp_anchor, strict=True)]
    got = np.asarray(result["behaviour"]["kl_icl_anchor"])
    np.testing.assert_allclose(got, kl, rtol=1e-3, atol=1e-6 * max(1.0, float(np.max(kl))))
