"""What a run keeps besides results.json: predicted text, loss curves, tuned adapters."""

from __future__ import annotations

import json
from pathlib import Path

from tunelens.experiments.audit.spec import AuditSpec
from tunelens.experiments.convergence.spec import ConvergenceSpec
from tunelens.runs.store import CellStore
from tunelens.runs.study import run_study
from tunelens.spec import Spec


def small_spec(save_adapters: bool) -> Spec:
    return Spec(
        save_adapters=save_adapters,
        convergence=ConvergenceSpec(
            n_pairs=3, seeds=[0], k=[2], controls=["none"], tuning={"epochs": 1}
        ),
        audit=AuditSpec(
            definitions=["original"],
            examples=["original"],
            eval_instances_per_task=2,
            tuning={"max_steps": 2},
        ),
    )


def records(out: Path, experiment: str) -> list[dict]:
    return list(CellStore(out).records(experiment))


def test_cells_keep_predictions_and_loss_curves_and_adapters_are_saved(tmp_path: Path):
    plain, saving = tmp_path / "plain", tmp_path / "saving"
    run_study(small_spec(False), plain, progress=False)
    run_study(small_spec(True), saving, progress=False)
    # saving adapters changes neither a result nor a cell key
    assert (saving / "results.json").read_bytes() != b""
    plain_results = json.loads((plain / "results.json").read_text())
    saving_results = json.loads((saving / "results.json").read_text())
    plain_results["spec"].pop("save_adapters")
    saving_results["spec"].pop("save_adapters")
    assert plain_results == saving_results
    assert {r["cell"]["key"] for r in records(plain, "convergence")} == {
        r["cell"]["key"] for r in records(saving, "convergence")
    }
    assert not (plain / "adapters").exists()

    (conv,) = records(saving, "convergence")
    result = conv["result"]
    for source in ("anchor", "icl", "it"):
        assert len(result["predictions"][source]) == result["n_pairs"] == 3
        assert all(isinstance(p, str) for p in result["predictions"][source])
    assert len(result["references"]) == 3
    # one PEFT adapter per tuned set, under the cell's key
    sets = sorted((saving / "adapters" / conv["cell"]["key"]).iterdir())
    assert len(sets) == 3
    for folder in sets:
        assert (folder / "adapter_config.json").is_file()
        assert (folder / "adapter_model.safetensors").is_file()

    grid = [r for r in records(saving, "audit") if "baseline" not in r["cell"]["params"]]
    (cell,) = grid
    curve = cell["result"]["loss_curve"]
    assert len(curve) == cell["result"]["training"]["steps"] == 2
    assert curve[-1] == round(cell["result"]["training"]["final_loss"], 6)
    adapter = saving / "adapters" / cell["cell"]["key"]
    assert (adapter / "adapter_config.json").is_file()


def test_the_manifest_records_the_invocation(tmp_path: Path):
    out = tmp_path / "run"
    spec = small_spec(False)
    run_study(spec, out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["results"] == "results.json"
    assert set(manifest["experiments"]) == {"convergence", "audit"}
    assert manifest["packages"]["torch"] and manifest["started"]
    assert spec.audit is not None and spec.convergence is not None
    assert manifest["effective_batch_size"] == {
        "convergence": spec.convergence.tuning.batch_size
        * spec.convergence.tuning.gradient_accumulation_steps,
        "audit": spec.audit.tuning.batch_size * spec.audit.tuning.gradient_accumulation_steps,
    }
    assert "manifest" not in json.loads((out / "results.json").read_text())
