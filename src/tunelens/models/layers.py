"""Which stack each captured layer belongs to: embeddings, encoder, decoder, decoder-only.

:func:`tunelens.models.hidden_states.capture_last_token_states` returns, for a
causal LM, the embeddings and then each block (``num_hidden_layers + 1``
layers), and for an encoder-decoder the encoder's embeddings and blocks
followed by the decoder's (``(encoder + 1) + (decoder + 1)`` layers) on one
axis. :func:`layer_labels` names every index of that axis, so results, plots
and tables can keep the two stacks apart. Torch-free.
"""

from __future__ import annotations

from typing import Any

from tunelens.models.wrappers import unwrap_model

__all__ = ["block_counts", "layer_label_text", "layer_labels", "labels_for"]

STACKS = ("decoder-only", "encoder", "decoder")


def block_counts(config: Any) -> tuple[int, int]:
    """(encoder blocks, decoder blocks) of a transformers config; (0, L) for a causal LM."""
    if getattr(config, "is_encoder_decoder", False):
        encoder = int(
            getattr(config, "encoder_layers", None) or getattr(config, "num_layers", 0) or 0
        )
        decoder = int(
            getattr(config, "decoder_layers", None)
            or getattr(config, "num_decoder_layers", None)
            or encoder
        )
        return encoder, decoder
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return 0, int(text.num_hidden_layers)


def labels_for(encoder: int, decoder: int) -> list[dict[str, Any]]:
    """Per captured layer: ``stack``, ``block`` (0 = that stack's embeddings) and ``label``."""
    if encoder == 0:
        stacks = [("decoder-only", decoder)]
    else:
        stacks = [("encoder", encoder), ("decoder", decoder)]
    out: list[dict[str, Any]] = []
    for stack, blocks in stacks:
        for block in range(blocks + 1):
            out.append({"stack": stack, "block": block, "label": layer_label_text(stack, block)})
    return out


def layer_label_text(stack: str, block: int) -> str:
    """'emb', '3'; with an encoder-decoder 'enc emb', 'enc 2', 'dec emb', 'dec 1'."""
    name = "emb" if block == 0 else str(block)
    prefix = {"encoder": "enc ", "decoder": "dec "}.get(stack, "")
    return prefix + name


def layer_labels(loaded: Any, n_layers: int | None = None) -> list[dict[str, Any]] | None:
    """Labels of the captured layers of ``loaded`` (a LoadedModel); None if they do not fit.

    ``n_layers``, when given, is the number of layers actually captured; a
    model whose states do not have the expected count gets None (no labels
    rather than wrong ones).
    """
    config = unwrap_model(loaded.model).config
    try:
        encoder, decoder = block_counts(config)
    except (AttributeError, TypeError, ValueError):
        return None
    if loaded.kind == "seq2seq" and encoder == 0:
        return None
    labels = labels_for(encoder, decoder)
    if n_layers is not None and len(labels) != n_layers:
        return None
    return labels
