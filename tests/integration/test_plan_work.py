"""`tunelens plan` counts the generate calls a cell really makes (world model, small cells)."""

from __future__ import annotations

import pytest

from tunelens.api import RunContext, StudyInputs, get_experiments
from tunelens.models.loading import load_model
from tunelens.runs.costs import TokenCounter
from tunelens.runs.plan import _tokenizer, estimate_work, model_size
from tunelens.runs.study import plan_cells
from tunelens.spec import Spec


@pytest.fixture(scope="module")
def planned():
    spec = Spec.model_validate(
        {
            "convergence": {
                "n_pairs": 6,
                "seeds": [0],
                "k": [2],
                "controls": ["none"],
                "tuning": {"epochs": 1},
            },
            "audit": {
                "eval_instances_per_task": 3,
                "instances_per_task": [1],
                "definitions": ["original"],
                "examples": ["original"],
                "tuning": {"epochs": 1},
            },
        }
    )
    experiments = get_experiments()
    return experiments, plan_cells(spec, experiments, StudyInputs())


def test_planned_generate_calls_are_the_calls_cells_make(planned):
    experiments, sections = planned
    loaded = load_model("world")
    counter = TokenCounter(_tokenizer("world"))
    size = model_size("world")
    calls = []
    original = loaded.model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape)
        return original(*args, **kwargs)

    loaded.model.generate = counting
    context = RunContext(load_model=lambda *args, **kwargs: loaded)
    checked = 0
    for name, _section, cells in sections:
        for cell in cells:
            if name == "audit" and cell.params.get("baseline") in ("random", "copy_input"):
                continue
            work = estimate_work(cell, counter, size)
            assert work.exact
            calls.clear()
            experiments[name].run_cell(cell, context)
            assert len(calls) == work.generate_calls, cell.name
            checked += 1
    assert checked >= 3
