"""Text for a terminal: control characters from untrusted text made visible, never obeyed.

Task text, file names and stored examples may hold ANSI/OSC escape sequences
(``ESC [ 2 J`` clears the screen, ``ESC ] 0 ; ... BEL`` retitles the window).
Human-readable output passes such text through :func:`escape_control`, which
writes every C0/C1 control character (and DEL) as a Python-style escape
(``\\x1b``), keeping newlines and tabs only where a block of text is shown.
``--json`` output needs nothing: ``json.dumps`` escapes control characters.
"""

from __future__ import annotations

import re
import sys

__all__ = ["escape_control", "one_line", "warn"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BLOCK = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_control(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control characters escaped; ``keep_newlines`` keeps ``\\n`` and ``\\t``."""
    pattern = _CONTROL_BLOCK if keep_newlines else _CONTROL
    return pattern.sub(_escape, text)


def one_line(text: str) -> str:
    """``text`` as one safe terminal line (newlines and every control character escaped)."""
    return escape_control(text)


def warn(message: str) -> None:
    """``warning: <message>`` as one line on stderr (where the input is usable but doubtful),
    the way the CLI prints its other warnings; shown also without ``--verbose``."""
    sys.stderr.write(f"warning: {one_line(message)}\n")
    sys.stderr.flush()
