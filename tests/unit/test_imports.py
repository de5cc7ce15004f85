"""`import tunelens` and the CLI stay light: no heavy library loads until a command needs it."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("nltk", "torch", "scipy", "matplotlib", "transformers")


def test_import_loads_no_heavy_library():
    code = (
        "import json, sys\n"
        "import tunelens, tunelens.cli\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_every_public_name_resolves():
    import tunelens

    assert set(tunelens.__all__) >= {"run_study", "run_decide", "Experiment", "exact_match"}
    for name in tunelens.__all__:
        assert getattr(tunelens, name) is not None, name
