"""Headless Chromium for the report tests: one set of flags, a throwaway profile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def run_chromium(
    chromium: str | Path, profile: Path, *args: str, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    """Chromium with ``args`` after the common flags, its profile in ``profile`` (removed after)."""
    command = [str(chromium), *FLAGS, f"--user-data-dir={profile}", *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
