"""One run per folder: ``DIR/.lock`` holds the PID and host of the run that owns DIR.

A second run on the same folder refuses with one line (exit 2) or, with
``wait=True``, waits until the lock is free. A lock whose holder is a dead
process on this host is stale and taken over; a lock from another host is
honoured (its process cannot be checked from here: delete the file when you
know that run is gone).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tunelens.errors import TunelensInputError

LOCK = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class RunLock:
    """``with RunLock(out_dir, wait=False):`` holds ``out_dir/.lock`` for the block."""

    def __init__(self, directory: Path, *, wait: bool = False, poll_seconds: float = 1.0):
        self.path = Path(directory) / LOCK
        self.wait = wait
        self.poll_seconds = poll_seconds
        self.held = False
        self.host = socket.gethostname()

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"pid": os.getpid(), "host": self.host, "started": time.time()}, handle)
        return True

    def _stale(self, holder: dict[str, Any]) -> bool:
        pid = holder.get("pid")
        if holder.get("host") != self.host or not isinstance(pid, int):
            # An unreadable lock is stale only once it is old (a writer may be mid-way).
            return not holder and self._age() > 10.0
        return pid != os.getpid() and not _alive(pid)

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return 0.0

    def acquire(self) -> None:
        while True:
            if self._try_create():
                self.held = True
                return
            holder = _read(self.path)
            if holder is None:
                continue  # released between our two looks
            if self._stale(holder):
                self.path.unlink(missing_ok=True)
                continue
            if not self.wait:
                who = f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"
                raise TunelensInputError(
                    f"another tunelens run ({who}) is using this folder; wait for it to end, "
                    f"pass --wait to wait, or delete {self.path} if that run is gone",
                    source=str(self.path.parent),
                )
            time.sleep(self.poll_seconds)

    def release(self) -> None:
        if not self.held:
            return
        holder = _read(self.path)
        if holder is not None and holder.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
