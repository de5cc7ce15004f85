"""Per-head work at the last prompt token: read heads, patch heads, add to the residual stream.

The function-vector study (Todd et al., "Function Vectors in Large Language
Models", ICLR 2024) needs three interventions on a causal LM's forward, each at
the last prompt token only:

- **read** every head's output there: the input of each block's attention
  output projection (``o_proj`` of Llama / Mistral / Qwen2, ``c_proj`` of
  GPT-2), sliced per head (:func:`record_head_outputs`);
- **patch** one head's output there with a given vector, a different head (or
  none) on each row of the batch, so all heads of a layer run in one forward
  (:func:`patch_heads`);
- **add** a vector to the residual stream after block L there, L = 0 being the
  token embeddings as in :mod:`tunelens.models.patching`, a different layer (or
  none) on each row (:func:`add_to_residual`).

The projections and head layout come from
:func:`tunelens.models.attention.attention_projections`; :func:`head_layout`
turns "no per-head outputs" and encoder-decoders into one input error.

The hooks act in the forwards of :func:`tunelens.models.scoring.score_label_continuations`,
so a patched or steered prompt is scored by its labels' whole continuations.
That function runs each batch's prompt forward (left-padded, so the last
position is every row's last prompt token) and then the label continuations on
its cache; a forward pre-hook on the model tells the two apart (a continuation
brings a cache), and only the prompt forward is edited, so the continuations
read the edited state through the cache. Rows are counted across the prompt
forwards in the order they come, so the caller must score with fixed batches in
input order (``batch_size`` alone), as :func:`scored_with` does.

:func:`head_contribution` is a head's output written into the residual stream:
the output projection applied to that head's slice alone, minus the projection
of zeros (a bias is not any one head's).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from tunelens.errors import TunelensInputError
from tunelens.models.attention import (
    AttentionProjection,
    UnsupportedAttentionError,
    attention_projections,
)
from tunelens.models.blocks import blocks_of
from tunelens.models.loading import LoadedModel
from tunelens.models.scoring import LabelScores, score_label_continuations

__all__ = [
    "HeadRecord",
    "add_to_residual",
    "head_contribution",
    "head_layout",
    "patch_heads",
    "prompt_rows",
    "record_head_outputs",
    "scored_with",
]

_CACHE_KEYS = ("cache", "past_key_values")


def head_layout(loaded: LoadedModel, *, where: str | None = None) -> list[AttentionProjection]:
    """Each block's attention output projection and heads; an input error (exit 2) for an
    encoder-decoder or a model whose heads cannot be sliced."""
    if loaded.kind != "causal":
        raise TunelensInputError(
            f"{loaded.name} is an encoder-decoder; per-head function vectors need a "
            "decoder-only causal LM (Llama, Mistral, Qwen2, GPT-2, ...)",
            where=where,
        )
    try:
        return attention_projections(loaded.model)
    except UnsupportedAttentionError as error:
        raise TunelensInputError(
            f"{loaded.name} has no per-head attention outputs to slice ({error})", where=where
        ) from None


@dataclass
class _PromptRows:
    """Which caller rows the running forward holds, while it is a prompt forward (else None)."""

    next_row: int = 0
    rows: torch.Tensor | None = None

    def pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if any(kwargs.get(key) is not None for key in _CACHE_KEYS):
            self.rows = None  # a label continuation on the prompt's cache: not edited
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise RuntimeError("the model was called without input_ids: rows cannot be counted")
        n = int(ids.shape[0])
        self.rows = torch.arange(self.next_row, self.next_row + n)
        self.next_row += n


@contextmanager
def prompt_rows(loaded: LoadedModel) -> Iterator[_PromptRows]:
    """Track the caller rows of each prompt forward of ``loaded.model`` (see the module doc)."""
    tracker = _PromptRows()
    handle = loaded.model.register_forward_pre_hook(tracker.pre_hook, with_kwargs=True)
    try:
        yield tracker
    finally:
        handle.remove()


@dataclass
class HeadRecord:
    """Head outputs at the last prompt token, filled by :func:`record_head_outputs`:
    per block, one ``[rows, n_heads, head_dim]`` float32 tensor per prompt forward."""

    parts: list[list[torch.Tensor]] = field(default_factory=list)

    def stacked(self) -> torch.Tensor:
        """``[rows, blocks, n_heads, head_dim]`` (every block the same head layout)."""
        return torch.stack([torch.cat(block) for block in self.parts], dim=1)


@contextmanager
def record_head_outputs(
    loaded: LoadedModel, projections: Sequence[AttentionProjection]
) -> Iterator[HeadRecord]:
    """Record every head's output at the last prompt token of each prompt forward."""
    record = HeadRecord([[] for _ in projections])
    with ExitStack() as stack:
        rows = stack.enter_context(prompt_rows(loaded))

        def make(block: int, projection: AttentionProjection) -> Any:
            def hook(module: torch.nn.Module, args: tuple) -> None:
                if rows.rows is not None:
                    last = args[0][:, -1].detach().float().cpu()
                    record.parts[block].append(projection.split_heads(last))

            return hook

        for block, projection in enumerate(projections):
            handle = projection.projection.register_forward_pre_hook(make(block, projection))
            stack.callback(handle.remove)
        yield record


@contextmanager
def patch_heads(
    loaded: LoadedModel,
    projection: AttentionProjection,
    heads: torch.Tensor,
    values: torch.Tensor,
) -> Iterator[None]:
    """Replace head ``heads[r]`` of ``projection``'s block with ``values[r]`` at row r's last
    prompt token (``heads[r] < 0``: row r unpatched). ``heads`` ``[rows]``, ``values``
    ``[rows, head_dim]``, rows in the caller's order."""
    if values.shape[0] != heads.shape[0] or values.shape[-1] != projection.head_dim:
        raise ValueError(
            f"expected {heads.shape[0]} values of {projection.head_dim}, got {tuple(values.shape)}"
        )
    with prompt_rows(loaded) as rows:

        def hook(module: torch.nn.Module, args: tuple) -> Any:
            if rows.rows is None:
                return None
            wanted = heads[rows.rows]
            patched = torch.nonzero(wanted >= 0).flatten()
            if patched.numel() == 0:
                return None
            hidden = args[0].clone()
            last = projection.split_heads(hidden[:, -1])  # a view into ``hidden``
            batch_rows = patched.to(hidden.device)
            head_ids = wanted[patched].to(hidden.device)
            fill = values[rows.rows[patched]].to(hidden.device, hidden.dtype)
            last[batch_rows, head_ids] = fill
            return (hidden, *args[1:])

        handle = projection.projection.register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()


@contextmanager
def add_to_residual(
    loaded: LoadedModel, layers: torch.Tensor, vectors: torch.Tensor
) -> Iterator[None]:
    """Add ``vectors[r]`` (``[rows, hidden]``, or one ``[hidden]`` for every row) to the
    residual stream after block ``layers[r]`` at row r's last prompt token (0: the token
    embeddings, the first block's input; ``layers[r] < 0``: row r unchanged)."""
    blocks = blocks_of(loaded.model)
    wanted_layers = sorted({int(x) for x in layers.tolist() if x >= 0})
    if any(layer > len(blocks) for layer in wanted_layers):
        raise ValueError(f"layers lie in 0 .. {len(blocks)}, got {wanted_layers[-1]}")
    rows_vectors = vectors.expand(layers.shape[0], -1) if vectors.dim() == 1 else vectors

    def added(hidden: torch.Tensor, layer: int, rows: torch.Tensor) -> torch.Tensor:
        chosen = torch.nonzero(layers[rows] == layer).flatten()
        if chosen.numel() == 0:
            return hidden
        hidden = hidden.clone()
        at = chosen.to(hidden.device)
        hidden[at, -1] += rows_vectors[rows[chosen]].to(hidden.device, hidden.dtype)
        return hidden

    with ExitStack() as stack:
        tracker = stack.enter_context(prompt_rows(loaded))

        def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
            if tracker.rows is None:
                return None
            if args:
                return (added(args[0], 0, tracker.rows), *args[1:]), kwargs
            return args, {
                **kwargs,
                "hidden_states": added(kwargs["hidden_states"], 0, tracker.rows),
            }

        def make_post(layer: int) -> Any:
            def post_hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
                if tracker.rows is None:
                    return None
                if isinstance(output, tuple):
                    return (added(output[0], layer, tracker.rows), *output[1:])
                return added(output, layer, tracker.rows)

            return post_hook

        for layer in wanted_layers:
            if layer == 0:
                handle = blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
            else:
                handle = blocks[layer - 1].register_forward_hook(make_post(layer))
            stack.callback(handle.remove)
        yield


@torch.no_grad()
def head_contribution(
    projection: AttentionProjection, head: int, output: torch.Tensor
) -> torch.Tensor:
    """What head ``head`` writes into the residual stream when its output is ``output``
    (``[head_dim]``): the projection of that slice alone minus the projection of zeros
    (float32 ``[hidden]``)."""
    module = projection.projection
    weight = next(module.parameters())
    width = projection.n_heads * projection.head_dim
    x = torch.zeros((2, width), dtype=weight.dtype, device=weight.device)
    x[0, head * projection.head_dim : (head + 1) * projection.head_dim] = output.to(weight)
    y = module(x).float()
    return (y[0] - y[1]).cpu()


def scored_with(
    loaded: LoadedModel,
    prompts: Sequence[str],
    labels: Sequence[Sequence[str]],
    hooks: Any,
    *,
    tasks: Sequence[str] | None = None,
) -> LabelScores:
    """:func:`~tunelens.models.scoring.score_label_continuations` of ``prompts`` in one
    batch (rows in input order, as the hooks count them) inside the context ``hooks``
    (an edit of this module, or ``contextlib.nullcontext()``)."""
    with hooks:
        return score_label_continuations(
            loaded, list(prompts), labels, tasks=tasks, batch_size=max(1, len(prompts))
        )
