"""Screenshot of the default report for the README and the docs: docs/assets/report.png.

Runs the default study (``tunelens run --out DIR``, no spec: a few minutes on 2 CPU
cores), then has headless Chromium render DIR/report.html at 1,280 x 900 (what a reader
sees first: each study's verdict box) and writes the PNG with a 256-colour palette, so
that it stays small (< 300 KB). ``--reuse`` screenshots a finished run without running
it again; ``--fixture`` also writes that run's results.json (gzipped) to
tests/data/default_results.json.gz, the input of tests/integration/test_report_layout.py.

    python scripts/report_screenshot.py                      # run, then screenshot
    python scripts/report_screenshot.py --run-dir runs/default --reuse --fixture
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PNG = ROOT / "docs" / "assets" / "report.png"
FIXTURE = ROOT / "tests" / "data" / "default_results.json.gz"
WIDTH, HEIGHT = 1280, 900
LIMIT_BYTES = 300_000


def chromium() -> str:
    """The Chromium binary, or exit 2 with how to install it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        sys.exit("error: no chromium on PATH; install it (apt-get install -y chromium)")
    return found


def run_default(run_dir: Path) -> None:
    """``tunelens run --out run_dir`` on the embedded default spec (resumes a partial run)."""
    command = [sys.executable, "-m", "tunelens", "run", "--out", str(run_dir), "--no-progress"]
    subprocess.run(command, check=True)


def screenshot(report: Path, png: Path) -> int:
    """``report`` at WIDTH x HEIGHT as a palette PNG at ``png``; returns its size in bytes."""
    with tempfile.TemporaryDirectory() as scratch:
        shot = Path(scratch) / "shot.png"
        command = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={Path(scratch) / 'profile'}",
            f"--screenshot={shot}",
            f"--window-size={WIDTH},{HEIGHT}",
            report.resolve().as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if not shot.is_file():
            sys.exit(f"error: chromium wrote no screenshot: {result.stderr[-2000:]}")
        image = Image.open(shot).convert("RGB")
    png.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)
    return png.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="run directory (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="screenshot the run as it is")
    parser.add_argument("--png", type=Path, default=PNG, help=f"output (default: {PNG})")
    parser.add_argument("--fixture", action="store_true", help=f"also write {FIXTURE}")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        run_dir = args.run_dir or Path(scratch) / "default"
        if not args.reuse:
            run_default(run_dir)
        report = run_dir / "report.html"
        if not report.is_file():
            sys.exit(f"error: {report} does not exist; run without --reuse")
        size = screenshot(report, args.png)
        print(f"screenshot: {args.png} ({size / 1000:.0f} KB, {WIDTH} x {HEIGHT})")
        if size > LIMIT_BYTES:
            sys.exit(f"error: {args.png} is {size} bytes, over {LIMIT_BYTES}")
        if args.fixture:
            FIXTURE.write_bytes(gzip.compress((run_dir / "results.json").read_bytes(), 9, mtime=0))
            print(f"fixture: {FIXTURE}")


if __name__ == "__main__":
    main()
