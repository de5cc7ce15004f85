"""A real Ray cluster: `ray start --head` on loopback, then `tunelens run --address`.

The cluster runs in its own processes (as a user's would), with Ray's token
authentication on (RAY_AUTH_MODE=token, the token in RAY_AUTH_TOKEN for the
cluster and the driver alike); results equal a local run byte for byte (small
models run one thread per cell either way, see tunelens.runs.threads), and a
worker killed mid-cell is retried by Ray. The head listens on 127.0.0.2: Ray
rewrites the addresses 127.0.0.1 and localhost to the machine's network
address, which this test must not use.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.fakes import FakeConvergence, small_spec

from tunelens.runs.study import run_study

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        return int(probe.getsockname()[1])


def ray_cli() -> str:
    found = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if found is None:
        pytest.skip("the ray command is not installed")
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("ray")
    ray = ray_cli()
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    saved = {name: os.environ.get(name) for name in auth}
    os.environ.update(auth)  # the in-process driver of the second test authenticates too
    # Workers import the test helpers (fake experiments) from the repository root.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    started = subprocess.run(
        [
            ray,
            "start",
            "--head",
            "--node-ip-address=127.0.0.2",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        if started.returncode != 0:
            pytest.skip(f"ray start failed here: {started.stderr.strip()[-300:]}")
        yield f"127.0.0.2:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120, env=env)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def tunelens(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunelens", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"},
    )


def test_cluster_run_equals_local_run(cluster: str, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "convergence:\n  n_pairs: 3\n  seeds: [0]\n  k: [2]\n  controls: [none]\n"
        "  tuning: {epochs: 2}\n",
        encoding="utf-8",
    )
    local, remote = tmp_path / "local", tmp_path / "remote"
    done = tunelens("run", str(spec), "--out", str(local), "--no-progress")
    assert done.returncode == 0, done.stderr
    done = tunelens(
        "run",
        str(spec),
        "--out",
        str(remote),
        "--executor",
        "ray",
        "--address",
        cluster,
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((remote / "timings.json").read_text())["runs"][-1]["executor"] == "ray"
    assert (remote / "results.json").read_bytes() == (local / "results.json").read_bytes()


DRIVER = """
import sys
from tests.helpers.fakes import FakeAudit, FakeConvergence, small_spec
from tunelens.runs.executors import RayExecutor
from tunelens.runs.study import run_study

address, out, marker = sys.argv[1:4]
spec = small_spec().model_copy(update={"audit": None})
dying = {"convergence": FakeConvergence(die_once=marker), "audit": FakeAudit()}
run_study(spec, out, progress=False, experiments=dying, executor=RayExecutor(address))
"""


def test_a_worker_killed_mid_cell_is_retried(cluster: str, tmp_path: Path) -> None:
    spec = small_spec().model_copy(update={"audit": None})
    local = tmp_path / "local"
    run_study(spec, local, progress=False, experiments={"convergence": FakeConvergence()})
    marker, remote = tmp_path / "died", tmp_path / "remote"
    # The driver runs in its own process, as a user's would (Ray keeps per-process state).
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, cluster, str(remote), str(marker)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert marker.exists()  # one worker really died mid-cell
    assert (remote / "results.json").read_bytes() == (local / "results.json").read_bytes()
