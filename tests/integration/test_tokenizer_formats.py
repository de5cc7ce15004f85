"""Every common tokenizer format loads (issue 26.3): a SentencePiece-only model directory.

The Mistral v0.3 ``tokenizer.model`` (no ``tokenizer.json``) is copied from
``../shared/data/tokenizers`` into a temporary directory beside tiny random
weights, never into the repository.
"""

from __future__ import annotations

import shutil
import sys

import pytest
from tests.helpers.real_models import build_real_model, load_real_tokenizer, tokenizer_dir

from tunelens.errors import TunelensInputError
from tunelens.models.loading import load_model


@pytest.fixture(scope="module")
def sentencepiece_only_dir(tmp_path_factory):
    """Tiny random Mistral-shaped weights with only tokenizer.model + tokenizer_config.json."""
    source = tokenizer_dir("mistral")
    directory = tmp_path_factory.mktemp("sentencepiece-only")
    model, _ = build_real_model("mistral")
    model.save_pretrained(directory, safe_serialization=True)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(source / name, directory / name)
    assert not (directory / "tokenizer.json").exists()
    return directory


TEXT = "Definition: Decide whether the sentence entails the hypothesis. Output: 0 or 1"


def test_a_sentencepiece_only_tokenizer_loads_and_reads_like_the_fast_one(
    sentencepiece_only_dir,
):
    loaded = load_model(str(sentencepiece_only_dir))
    reference = load_real_tokenizer("mistral")  # the shipped tokenizer.json
    assert loaded.tokenizer(TEXT).input_ids == reference(TEXT).input_ids
    assert len(loaded.tokenizer) == len(reference)
    assert loaded.tokenizer.pad_token is not None and loaded.tokenizer.padding_side == "left"


def test_a_missing_sentencepiece_is_named_not_tiktoken(sentencepiece_only_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import fails as if not installed
    with pytest.raises(TunelensInputError) as caught:
        load_model(str(sentencepiece_only_dir))
    message = str(caught.value)
    assert "pip install sentencepiece" in message and "tokenizer.model" in message
    assert "tiktoken" not in message


def test_a_missing_protobuf_is_named(sentencepiece_only_dir, monkeypatch):
    # transformers keeps protobuf once imported, so the message is checked on its own.
    from tunelens.models.loading import _tokenizer_failure

    monkeypatch.setitem(sys.modules, "google.protobuf", None)
    error = ImportError("`tiktoken` is required to read a `tiktoken` file")
    assert _tokenizer_failure(sentencepiece_only_dir, error).endswith("pip install protobuf")
    monkeypatch.delitem(sys.modules, "google.protobuf")
    assert "tiktoken" in _tokenizer_failure(sentencepiece_only_dir, error)  # nothing missing
