"""The model factor: a spec's `models:` list runs both studies once per model."""

from __future__ import annotations

import pytest

from tunelens.experiments.audit.spec import AuditSpec
from tunelens.experiments.convergence.spec import ConvergenceSpec
from tunelens.runs.study import run_study
from tunelens.spec import Spec


@pytest.mark.slow
def test_models_list_gives_one_convergence_and_one_audit_entry_per_model(tmp_path):
    models = ["world-small", "world"]
    spec = Spec(
        models=models,
        limit=2,
        convergence=ConvergenceSpec(n_pairs=2, seeds=[0], k=[2], controls=["none"]),
        audit=AuditSpec(
            definitions=["original"],
            examples=["original"],
            eval_encodings=["definition_only"],
            max_new_tokens=2,
            bootstrap=100,
        ),
    )
    assert spec.convergence is not None and spec.convergence.models == models
    assert spec.audit is not None and spec.audit.models == models
    results = run_study(spec, tmp_path / "run", progress=False)
    conv_models = [entry["condition"]["model"] for entry in results["convergence"]]
    assert sorted(conv_models) == sorted(models)
    by_model = results["audit_by_model"]
    assert sorted(by_model) == sorted(models)
    for audit in by_model.values():
        assert len(audit["audit"]) == 1  # the one grid cell of this model
        assert "untuned" in audit["baselines"]
    # The top-level audit keys are the first model's audit, unchanged in shape.
    assert results["audit"] == by_model[models[0]]["audit"]
    assert results["baselines"] == by_model[models[0]]["baselines"]


def test_a_section_list_wins_over_the_top_level_models():
    spec = Spec(
        models=["world-small", "world"],
        convergence=ConvergenceSpec(models=["world"]),
        audit=AuditSpec(model="world-it"),
    )
    assert spec.convergence is not None and spec.convergence.models == ["world"]
    assert spec.audit is not None and spec.audit.models == ["world-it"]
    assert spec.audit.model == "world-it"
    plain = Spec(audit=AuditSpec())
    assert plain.audit is not None and plain.audit.models == ["world"]
