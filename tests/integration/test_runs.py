"""run_study: store, resume after SIGKILL, local vs Ray executors give the same results.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests.helpers.fakes import XSS, FakeConvergence, fake_experiments, small_spec

from tunelens.runs.store import CellStore
from tunelens.runs.study import run_study
from tunelens.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]  # the repository root: tests.helpers imports from it
N_CELLS = 6 + 8  # small_spec(): 2 k x 3 seeds, 4 baselines + 2 x 2 grid


def timings(out: Path) -> dict:
    return json.loads((out / "timings.json").read_text())


def test_run_writes_the_run_directory(tmp_path):
    spec = small_spec()
    results = run_study(spec, tmp_path, progress=False, experiments=fake_experiments())
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == results
    assert set(results) == {
        "convergence",
        "audit",
        "baselines",
        "audit_format_share",
        "spec",
        "tunelens_version",
        "environment",
    }
    assert results["spec"] == spec.model_dump(mode="json")
    assert set(results["environment"]) >= {
        "python",
        "torch",
        "transformers",
        "peft",
        "platform",
        "device",
        "cpu_count",
        "seed",
    }
    assert load_spec(tmp_path / "spec.yaml") == spec
    assert len(CellStore(tmp_path).finished_keys()) == N_CELLS
    assert len(timings(tmp_path)["cells"]) == N_CELLS
    assert "seconds" not in (tmp_path / "results.json").read_text()
    assert XSS in results["spec"]["note"]  # data is stored as is; escaping is the report's job


def test_rerun_skips_finished_cells_and_recomputes_missing_ones(tmp_path):
    run_study(small_spec(), tmp_path, progress=False, experiments=fake_experiments())
    first = (tmp_path / "results.json").read_bytes()
    run_study(small_spec(), tmp_path, progress=False, experiments=fake_experiments())
    assert timings(tmp_path)["runs"][-1]["cells_run"] == 0
    removed = sorted((tmp_path / "cells" / "audit").glob("*.json"))[:3]
    for path in removed:
        path.unlink()
    run_study(small_spec(), tmp_path, progress=False, experiments=fake_experiments())
    assert timings(tmp_path)["runs"][-1]["cells_run"] == 3
    assert (tmp_path / "results.json").read_bytes() == first


def test_spec_change_adds_only_new_cells(tmp_path):
    spec = small_spec()
    run_study(spec, tmp_path, progress=False, experiments=fake_experiments())
    wider = spec.model_copy(
        update={"convergence": spec.convergence.model_copy(update={"k": [2, 4, 16]})}
    )
    results = run_study(wider, tmp_path, progress=False, experiments=fake_experiments())
    assert timings(tmp_path)["runs"][-1]["cells_run"] == 3  # k=16 x 3 seeds
    assert [e["condition"]["k"] for e in results["convergence"]] == [2, 4, 16]


def test_cell_error_keeps_finished_cells(tmp_path):
    class Failing(FakeConvergence):
        def run_cell(self, cell, context):
            if cell.params["k"] == 4:
                raise RuntimeError("boom")
            return super().run_cell(cell, context)

    with pytest.raises(RuntimeError, match="boom"):
        run_study(small_spec(), tmp_path, progress=False, experiments={"convergence": Failing()})
    assert len(CellStore(tmp_path).finished_keys()) == 3  # the k=2 cells before the failure
    assert not (tmp_path / "results.json").exists()


SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from tests.helpers.fakes import fake_experiments, small_spec
    from tunelens.runs.study import run_study
    run_study(small_spec(), Path(sys.argv[1]), progress=False,
              experiments=fake_experiments(delay=float(sys.argv[2])))
""")


def test_sigkill_then_resume_gives_identical_results(tmp_path):
    reference = tmp_path / "reference"
    run_study(small_spec(), reference, progress=False, experiments=fake_experiments())

    killed = tmp_path / "killed"
    script = tmp_path / "study.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, str(script), str(killed), "0.3"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    store = CellStore(killed)
    deadline = time.monotonic() + 60
    try:
        while len(store.finished_keys()) < 4:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the study stored no cells in 60 s"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    finished = len(store.finished_keys())
    assert 4 <= finished < N_CELLS
    assert not (killed / "results.json").exists()

    run_study(small_spec(), killed, progress=False, experiments=fake_experiments())
    assert timings(killed)["runs"][-1]["cells_run"] == N_CELLS - finished
    assert (killed / "results.json").read_bytes() == (reference / "results.json").read_bytes()


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_ray_and_local_executors_agree(tmp_path):
    """A private local Ray instance (1 CPU) runs each cell as a task; about 15 s."""
    pytest.importorskip("ray")
    from tunelens.runs.executors import RayExecutor

    local, distributed = tmp_path / "local", tmp_path / "ray"
    run_study(small_spec(), local, progress=False, experiments=fake_experiments())
    # Half the cells are already finished: Ray runs only the rest, then the same aggregation.
    run_study(
        small_spec().model_copy(update={"audit": None}),
        distributed,
        progress=False,
        experiments=fake_experiments(),
    )
    run_study(
        small_spec(),
        distributed,
        progress=False,
        experiments=fake_experiments(),
        executor=RayExecutor(num_cpus=1),
    )
    assert timings(distributed)["runs"][-1] == {
        **timings(distributed)["runs"][-1],
        "executor": "ray",
        "cells_run": 8,
    }
    assert (distributed / "results.json").read_bytes() == (local / "results.json").read_bytes()


def test_unknown_executor_and_address_without_ray_are_input_errors(tmp_path):
    from tunelens.errors import TunelensInputError

    with pytest.raises(TunelensInputError, match="unknown executor"):
        run_study(small_spec(), tmp_path, executor="dask", experiments=fake_experiments())
    with pytest.raises(TunelensInputError, match="--address needs --executor ray"):
        run_study(small_spec(), tmp_path, address="auto", experiments=fake_experiments())


def test_missing_ray_is_a_clear_input_error(monkeypatch):
    from tunelens.errors import TunelensInputError
    from tunelens.runs.executors import make_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(TunelensInputError, match="install it with"):
        make_executor("ray")
