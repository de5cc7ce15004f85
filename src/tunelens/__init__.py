"""tunelens: measure what in-context learning and instruction tuning do to a model."""

from __future__ import annotations

__version__ = "0.1.0"

from tunelens.measures.text import exact_match, rouge_l  # noqa: E402

__all__ = ["__version__", "exact_match", "rouge_l"]
