"""Each block's attention output projection and head layout, found without an architecture table.

Every transformers decoder block ends its self-attention in one linear layer
that maps the concatenated heads back to the residual stream: ``o_proj`` of
Llama, Mistral, Qwen2, Gemma and Phi-3, ``dense`` of Phi and GPT-NeoX,
``c_proj`` of GPT-2's ``attn``, ``out_proj`` of OPT and GPT-J, ``o`` of T5.
Two things read it:

* its **output** is the attention module's contribution to the residual stream
  (the "attention output" of update-similarity measures, SimAOU);
* its **input** is the heads' outputs side by side, ``[..., n_heads * head_dim]``
  with head ``h`` at ``[h * head_dim, (h + 1) * head_dim)``, which is where
  per-head work (function vectors, head patching) slices it
  (:meth:`AttentionProjection.split_heads`).

:func:`attention_projections` finds it structurally: in each block
(:func:`tunelens.models.blocks.blocks_of`) the first module whose class name
contains ``Attention`` (cross-attention excluded) that has, as a direct child, a
linear layer (``torch.nn.Linear``, a PEFT LoRA ``Linear``, GPT-2's ``Conv1D``)
from ``n_heads * head_dim`` features to the hidden size. Where several children
fit (a square query projection fits too), the conventional output names decide,
then the one child whose name is not a query/key/value name. Anything else
(fused or missing projections, recurrent blocks, heads that do not divide the
projection) raises :class:`UnsupportedAttentionError` with the block and the
reason, never a guess.

Caveat for hook users: :func:`tunelens.models.last_block.run_only_at` (the
packed hidden-state capture) runs the *last* block's output projection only at
the read positions, so a hook there sees those positions alone during that
capture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunelens.models.blocks import blocks_of
from tunelens.models.wrappers import unwrap_model

__all__ = [
    "AttentionOutputTap",
    "AttentionProjection",
    "UnsupportedAttentionError",
    "attention_projections",
]

# Conventional names of the output projection; used only to choose among layers that already
# fit structurally (a square q_proj has the same shape as o_proj).
_OUTPUT_NAMES = ("o_proj", "out_proj", "c_proj", "dense", "o", "out_dense", "wo")
# Names of query / key / value projections, which are never the output projection.
_QKV_NAMES = frozenset(
    ("q", "k", "v", "q_proj", "k_proj", "v_proj", "query", "key", "value")
    + ("c_attn", "q_attn", "qkv_proj", "query_key_value", "Wqkv", "wqkv")
)
_HEAD_COUNT_KEYS = ("num_heads", "num_attention_heads", "n_head", "n_heads")
_HEAD_DIM_KEYS = ("head_dim", "head_size", "key_value_proj_dim", "d_kv")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")


class UnsupportedAttentionError(ValueError):
    """The model's attention output projection cannot be located (or its heads not laid out).

    A ``ValueError`` so callers that already treat unusual models as "not
    measurable" catch it; the message names the block and what was missing.
    """


@dataclass(frozen=True)
class AttentionProjection:
    """One block's self-attention output projection.

    ``block`` is the 0-based block index (block ``i`` writes the residual
    stream that ``output_hidden_states`` returns at index ``i + 1``);
    ``attention`` the attention module; ``projection`` its output projection
    (a ``Linear``-like module whose input is ``[..., n_heads * head_dim]``,
    heads concatenated in order, and whose output is ``[..., hidden]``);
    ``name`` the projection's qualified name within the model.
    """

    block: int
    name: str
    attention: torch.nn.Module
    projection: torch.nn.Module
    n_heads: int
    head_dim: int

    def split_heads(self, projection_input: torch.Tensor) -> torch.Tensor:
        """``[..., n_heads * head_dim]`` → ``[..., n_heads, head_dim]`` (a view, no copy)."""
        width = projection_input.shape[-1]
        if width != self.n_heads * self.head_dim:
            raise ValueError(
                f"block {self.block}: expected {self.n_heads} x {self.head_dim} = "
                f"{self.n_heads * self.head_dim} features, got {width}"
            )
        return projection_input.unflatten(-1, (self.n_heads, self.head_dim))


def _features(layer: torch.nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a linear-like layer, or None for anything else.

    A wrapper around one (a batched LoRA stack's ``base``, PEFT's ``base_layer``)
    has its wrapped layer's features: the wrapper is what the forward calls.
    """
    for attribute in ("base_layer", "base"):
        inner = getattr(layer, attribute, None)
        if isinstance(inner, torch.nn.Module) and not hasattr(layer, "in_features"):
            return _features(inner)
    if type(layer).__name__ == "Conv1D":  # GPT-2's transposed linear: weight [in, out]
        weight = getattr(layer, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            return int(weight.shape[0]), int(weight.shape[1])
        return None
    n_in, n_out = getattr(layer, "in_features", None), getattr(layer, "out_features", None)
    if isinstance(n_in, int) and isinstance(n_out, int):
        return n_in, n_out
    return None


def _first_int(sources: tuple[Any, ...], keys: tuple[str, ...]) -> int | None:
    for source in sources:
        for key in keys:
            value = getattr(source, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _is_self_attention(name: str, module: torch.nn.Module) -> bool:
    kind = type(module).__name__.lower()
    where = name.lower()
    crossing = ("cross", "encoder_attn", "encdec")
    return "attention" in kind and not any(c in kind + where for c in crossing)


def _choose(block: int, fitting: list[str], all_linear: list[str]) -> str:
    """The output projection's child name among the children that fit structurally."""
    named = [n for n in _OUTPUT_NAMES if n in fitting]
    if named:
        return named[0]
    unnamed = [n for n in fitting if n not in _QKV_NAMES]
    if len(unnamed) == 1:
        return unnamed[0]
    raise UnsupportedAttentionError(
        f"block {block}: cannot tell the attention output projection among {fitting or all_linear}"
    )


def _projection_in(
    block: int, prefix: str, attention: torch.nn.Module, config: Any, hidden: int
) -> AttentionProjection | None:
    """The output projection of ``attention`` when one of its direct children fits, else None."""
    sources = (attention, getattr(attention, "config", None), config)
    n_heads = _first_int(sources, _HEAD_COUNT_KEYS)
    linear = {n: f for n, c in attention.named_children() if (f := _features(c)) is not None}
    fitting = [n for n, (_, n_out) in linear.items() if n_out == hidden]
    if not fitting or n_heads is None:
        return None
    name = _choose(block, fitting, list(linear))
    n_in = linear[name][0]
    head_dim = _first_int(sources, _HEAD_DIM_KEYS) or n_in // n_heads
    if n_heads * head_dim != n_in:
        raise UnsupportedAttentionError(
            f"block {block}: {prefix}.{name} takes {n_in} features, not {n_heads} heads x "
            f"{head_dim}; the heads cannot be sliced from its input"
        )
    return AttentionProjection(
        block=block,
        name=f"{prefix}.{name}",
        attention=attention,
        projection=getattr(attention, name),
        n_heads=n_heads,
        head_dim=head_dim,
    )


def attention_projections(
    model: torch.nn.Module, *, encoder: bool = False
) -> list[AttentionProjection]:
    """Per block, in order, the self-attention output projection of ``model`` and its heads.

    ``model`` is a transformers model, possibly under PEFT / Accelerate / DDP
    wrappers (the modules returned are the wrapped model's own, so hooks on
    them act in its forwards). ``encoder`` picks an encoder-decoder's encoder
    blocks instead of its decoder's. Raises :class:`UnsupportedAttentionError`
    when the blocks, a block's self-attention or its output projection cannot
    be found, or when its input is not ``n_heads * head_dim`` wide.
    """
    try:
        blocks = blocks_of(model, encoder=encoder)
    except ValueError as error:
        raise UnsupportedAttentionError(f"no transformer blocks: {error}") from error
    config: Any = unwrap_model(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _first_int((text, config), _HIDDEN_KEYS)
    if hidden is None:
        raise UnsupportedAttentionError("the model config names no hidden size")
    block_names = {id(b): n for n, b in model.named_modules()}
    found: list[AttentionProjection] = []
    for index, block in enumerate(blocks):
        prefix = block_names.get(id(block), f"block{index}")
        projection = None
        for name, module in block.named_modules():
            if name and _is_self_attention(name, module):
                projection = _projection_in(index, f"{prefix}.{name}", module, text, hidden)
                if projection is not None:
                    break
        if projection is None:
            raise UnsupportedAttentionError(
                f"block {index} ({type(block).__name__}): found no self-attention module with "
                f"a linear output projection to the hidden size {hidden}"
            )
        found.append(projection)
    return found


class AttentionOutputTap:
    """Each block's attention output at the positions a hidden-state capture reads.

    Handed to :func:`tunelens.models.hidden_states.capture_packed` (or
    ``capture_last_token_states``) as ``tap=``: the capture's own forwards are
    observed, so the attention outputs cost no extra forward. After the capture,
    :meth:`stacked` gives float32 ``[prompts, blocks, hidden]`` in prompt order
    (block ``b`` is index ``b``: what block ``b + 1`` of the residual-stream
    layout adds through attention). Use one tap per capture call.

    A model whose projections cannot be found (:class:`UnsupportedAttentionError`)
    or an encoder-decoder records nothing: :attr:`unsupported` says why and
    :meth:`stacked` returns None, so callers keep the residual stream alone.
    """

    def __init__(self) -> None:
        self.unsupported: str | None = None
        self._by_prompt: dict[int, list[torch.Tensor | None]] = {}

    def refuse(self, reason: str) -> None:
        """Record nothing from here on, for ``reason``."""
        self.unsupported = self.unsupported or reason
        self._by_prompt.clear()

    @contextlib.contextmanager
    def recording(
        self,
        model: torch.nn.Module,
        prompts: Sequence[int],
        rows: torch.Tensor,
        positions: torch.Tensor,
    ) -> Iterator[None]:
        """During one forward of ``model``: keep output ``[rows[i], positions[i]]`` of each
        block's output projection as prompt ``prompts[i]``'s.

        Enter it inside any context that registers its own hooks on the projections
        (:func:`~tunelens.models.last_block.run_only_at`), so these run after them
        and see the full-length output.
        """
        if self.unsupported is not None:
            yield
            return
        try:
            projections = attention_projections(model)
        except UnsupportedAttentionError as error:
            self.refuse(str(error))
            yield
            return
        n_blocks = len(projections)
        for prompt in prompts:
            self._by_prompt[prompt] = [None] * n_blocks
        handles = [
            p.projection.register_forward_hook(self._keeper(p.block, prompts, rows, positions))
            for p in projections
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _keeper(
        self, block: int, prompts: Sequence[int], rows: torch.Tensor, positions: torch.Tensor
    ) -> Any:
        def keep(module: torch.nn.Module, args: tuple, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() != 3:
                self.refuse(
                    f"block {block}: the output projection returned no [batch, seq, hidden]"
                )
                return
            picked = output.detach()[rows.to(output.device), positions.to(output.device)]
            for prompt, vector in zip(prompts, picked.float().cpu(), strict=True):
                if prompt in self._by_prompt:
                    self._by_prompt[prompt][block] = vector

        return keep

    def stacked(self) -> torch.Tensor | None:
        """float32 ``[prompts, blocks, hidden]`` in prompt order, or None (nothing recorded)."""
        if self.unsupported is not None or not self._by_prompt:
            return None
        order = sorted(self._by_prompt)
        if order != list(range(len(order))):
            raise ValueError(f"attention outputs recorded for prompts {order}, not 0..n-1")
        rows = []
        for prompt in order:
            vectors = self._by_prompt[prompt]
            if any(v is None for v in vectors):
                raise ValueError(f"prompt {prompt}: a block's attention output was not recorded")
            rows.append(torch.stack(vectors))  # type: ignore[arg-type]
        return torch.stack(rows)
