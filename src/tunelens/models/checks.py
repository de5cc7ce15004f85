"""Checks a model directory passes at load: its path, its tokenizer's ids, its chat template.

Each failure is a :class:`TunelensInputError` naming the model directory (exit
status 2, one line), found before a cell runs instead of as a traceback in the
middle of one (``IndexError`` from an embedding lookup, a jinja2 error from a
template) or, worse, as a run that succeeds on empty prompts.

- :func:`check_model_path`: a directory that is a symlink loop (``RuntimeError:
  Symlink loop`` from ``Path.resolve``, or "does not exist" from ``exists``).
- :func:`check_token_ids`: the tokenizer's largest id (its vocabulary with
  the added tokens) must be a row of the embedding table; comparing counts
  misses a tokenizer with gaps in its ids.
- :func:`check_chat_template`: a template must render the conversation the
  ``chat`` prompt template sends (one user message and the generation prompt)
  and keep its text. transformers renders in jinja2's sandbox; its errors
  (syntax, ``raise_exception``, an undefined attribute, a blocked escape
  attempt) become the one line here, and so does a template that renders for
  longer than :data:`RENDER_SECONDS` (nested loops: the sandbox bounds each
  ``range``, not their product).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelens.errors import TunelensInputError
from tunelens.terminal import one_line

__all__ = ["check_chat_template", "check_loaded", "check_model_path", "check_token_ids"]

PROBE = "tunelens probe: is this text kept?"
"""The user message a chat template is asked to render (plain ASCII, no edge whitespace)."""

RENDER_SECONDS = 10.0
"""How long one render may take (a real template takes milliseconds)."""


def check_model_path(path: str | Path) -> None:
    """Refuse a model path that is a symlink loop (it would read as missing, or crash resolve)."""
    directory = Path(path).expanduser()
    try:
        os.stat(directory)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise TunelensInputError(
                "the model directory is a symlink loop (a link that points back to itself)",
                source=str(directory),
            ) from None
    except (ValueError, RuntimeError):  # a NUL in the path; left to the caller's checks
        return


def check_loaded(model: Any, tokenizer: Any, source: str) -> None:
    """Every load-time check of a loaded model and its tokenizer (``source``: the directory)."""
    check_token_ids(model, tokenizer, source)
    check_chat_template(tokenizer, source)


def check_token_ids(model: Any, tokenizer: Any, source: str) -> None:
    """The tokenizer's largest token id must index the model's embedding table."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if not isinstance(rows, int):
        return
    try:
        vocabulary = tokenizer.get_vocab()  # includes the added tokens
    except (AttributeError, NotImplementedError, TypeError):
        return
    ids = [i for i in vocabulary.values() if isinstance(i, int)]
    largest = max(ids, default=-1)
    if largest >= rows:
        token = next(t for t, i in vocabulary.items() if i == largest)
        raise TunelensInputError(
            f"the tokenizer's token {token!r} has id {largest} but the model's embedding table "
            f"has {rows} rows (ids 0 .. {rows - 1}); the tokenizer does not belong to these "
            "weights",
            source=source,
        )


def check_chat_template(tokenizer: Any, source: str) -> None:
    """A chat template, if the tokenizer has one, must render a user message and keep its text."""
    if not getattr(tokenizer, "chat_template", None):
        return
    try:
        with _deadline(RENDER_SECONDS):
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": PROBE}], tokenize=False, add_generation_prompt=True
            )
    except Exception as error:  # noqa: BLE001 - jinja2, sandbox and template code raise anything
        raise TunelensInputError(
            f"the tokenizer's chat template does not render: {_reason(error)}; fix or remove "
            "chat_template (tokenizer_config.json or chat_template.jinja)",
            source=source,
        ) from None
    if not isinstance(text, str) or not text.strip():
        raise TunelensInputError(
            "the tokenizer's chat template renders an empty prompt: every prompt would be "
            "empty; fix or remove chat_template",
            source=source,
        )
    if PROBE not in text:
        raise TunelensInputError(
            "the tokenizer's chat template drops the user's message: every prompt would lose "
            "its text; fix or remove chat_template",
            source=source,
        )


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the block after ``seconds`` (SIGALRM: main thread, POSIX, and
    only where no one else's alarm is set; elsewhere the block runs unbounded)."""
    usable = (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    )
    if not usable:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"rendering took longer than {seconds:g} s")

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def _reason(error: BaseException) -> str:
    """``TemplateSyntaxError: unexpected '}' (line 1)``, on one short line."""
    line = getattr(error, "lineno", None)
    where = f" (line {line})" if isinstance(line, int) else ""
    message = one_line(str(error) or type(error).__name__)
    if len(message) > 200:
        message = message[:197] + "..."
    return f"{type(error).__name__}: {message}{where}"
