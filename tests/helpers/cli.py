"""Run the real CLI entry (``tunelens.cli:main``) in this process and capture what it prints.

Faithful to the console script: ``main()`` is what ``tunelens`` runs, with its
exit-code handling, its one-line errors and its SIGINT handler; only the
process boundary is saved (seconds per call on 2 cores).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()


def invoke(*args: str, cwd: Path | None = None) -> Result:
    """``tunelens ARGS`` through ``tunelens.cli.main``: exit code, stdout and stderr."""
    from tunelens.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    # main() installs handlers for SIGINT, SIGTERM and SIGHUP: give the test process its own back.
    old_handlers = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    sys.argv = ["tunelens", *map(str, args)]
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exit_:
                if exit_.code is None:
                    code = 0
                elif isinstance(exit_.code, int):
                    code = exit_.code
                else:
                    err.write(f"{exit_.code}\n")
                    code = 1
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)
    return Result(code, out.getvalue(), err.getvalue())


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (files and folders), relative: what a command wrote."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_one_error_line(result: Result) -> str:
    """Exit 2, exactly one stderr line starting with ``error:``, no traceback; the line."""
    assert result.code == 2, (result.code, result.stderr, result.stdout)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    lines = result.stderr_lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    return lines[0]
