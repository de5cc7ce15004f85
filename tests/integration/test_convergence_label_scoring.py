"""The convergence cell's IT readings under full fine-tuning are label scores of the tuned model.

Full fine-tuning probes each tuned set alone (the per-set path); on the Mistral
tokenizer task1344's labels are two tokens each (a space piece, then the
digit), so the readings come from the cached continuation forwards. Every
scoring call on a tuned model is checked, while that model is alive, against
the full-string forwards of tests/integration/test_label_scoring.py.
"""

from __future__ import annotations

import pytest
from tests.integration.test_label_scoring import assert_scores_match, reference_score
from tests.integration.test_label_scoring_task1344 import PARAMS, task1344  # noqa: F401

import tunelens.models.scoring as scoring
from tunelens.experiments.convergence import run_convergence_cell
from tunelens.models.loading import load_model
from tunelens.spec import TuningSpec


@pytest.mark.slow
def test_full_fine_tuning_cell_scores_labels_on_the_tuned_model(
    task1344,  # noqa: F811
    real_model_dir,
    monkeypatch,
):
    loaded = load_model(str(real_model_dir("mistral")))
    calls: list[int] = []
    real = scoring.score_label_continuations

    def spy(probe, prompts, labels, **kwargs):
        out = real(probe, prompts, labels, **kwargs)
        calls.append(len(prompts))
        if len(calls) > 2:  # after the anchor and ICL calls: a tuned set, checked while tuned
            for i, (prompt, row) in enumerate(zip(prompts, labels, strict=True)):
                want = [reference_score(probe, prompt, label) for label in row]
                assert_scores_match(out.summed[i], want)
        return out

    monkeypatch.setattr(scoring, "score_label_continuations", spy)
    tuning = TuningSpec(method="full", epochs=1, batch_size=2, learning_rate=1e-3)
    params = {**PARAMS, "model": "mistral", "n_pairs": 4, "patching": False}
    params["tuning"] = tuning.model_dump()
    result = run_convergence_cell(loaded, task1344, params, seed=1)
    assert sum(calls[2:]) == result["n_pairs"] == 4  # every IT row, on its tuned model
    assert len(calls) == 2 + 2  # two sets of two anchors, each probed alone
    assert result["behaviour"]["scoring"]["label_rows"] == 4
    assert min(result["behaviour"]["kl_icl_it"]) > 0
    assert min(min(row) for row in result["cos"]["anchor_it"]) < 0.9999  # tuning moved it
