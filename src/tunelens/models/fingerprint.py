"""A model's fingerprint: a digest of the *content* of its config, tokenizer and weight files.

Names and modification times are not enough: a model retrained into the same
directory (or a new shipped world model) must invalidate every cell computed
with the old one. Each file is hashed in full with SHA-256 (about 1 s per GB);
hashes are cached in this process by (path, size, mtime, inode), so a study
hashes each model once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tunelens.io import digest_json
from tunelens.models.paths import resolve_model_path

__all__ = ["model_fingerprint", "model_files"]

# What a model's outputs can depend on; other files (README, training logs) are left out.
_PATTERNS = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer*.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.model",
    "chat_template.*",
)
_CHUNK = 1 << 22
_file_hashes: dict[tuple[str, int, int, int], str] = {}


def model_files(directory: Path) -> list[Path]:
    """The files of a model directory that its fingerprint covers, sorted by name."""
    found = {p for pattern in _PATTERNS for p in directory.glob(pattern) if p.is_file()}
    return sorted(found, key=lambda p: p.name)


def _file_hash(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    cached = _file_hashes.get(key)
    if cached is None:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        cached = _file_hashes[key] = digest.hexdigest()
    return cached


def model_fingerprint(name_or_path: str) -> str:
    """Digest of the model's files' content (``"world"`` is the shipped model's files)."""
    directory = resolve_model_path(name_or_path)
    return digest_json([[p.name, _file_hash(p)] for p in model_files(directory)])
