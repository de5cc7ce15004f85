"""The last decoder block's position-wise work, run only at the positions that are read.

Nothing after a causal LM's last block mixes positions: the final norm and the
LM head act on each position alone. So where only some positions are read (the
last token of each packed prompt in a hidden-state capture, the positions that
predict a target in a tuning loss), the last block's MLP and its attention's
query and output projections need to run only there. Keys and values are still
computed everywhere (the read positions attend to them). On a 6-layer Llama that
drops about a seventh of the linear FLOPs of a forward, and as much again of its
backward in training.

:func:`last_block_positionwise` finds those modules by the names transformers
gives them; :func:`run_only_at` cuts them to the read positions with forward
hooks for the duration of one forward. Where a model has no such modules
(mixture-of-experts blocks, fused ``qkv`` projections) the rest still runs in
full, so results never depend on what was found.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from tunelens.models.blocks import blocks_of

# Position-wise projections of an attention module, by the names transformers gives them: the
# query projection (its output is read only at the query's own position) and the output
# projection (Llama/Qwen2/Mistral/Gemma ``o_proj``, GPT-2 ``c_proj``, OPT ``out_proj``, Phi and
# GPT-NeoX ``dense``). Keys and values are needed at every position and are never cut.
_QUERY_PROJECTIONS = ("q_proj",)
_OUTPUT_PROJECTIONS = ("o_proj", "c_proj", "out_proj", "dense")
# Position-wise layer classes: torch's and PEFT's LoRA ``Linear``, GPT-2's ``Conv1D``.
_POSITIONWISE_LAYERS = ("Linear", "Conv1D")


def last_block_positionwise(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The last decoder block's position-wise modules whose unread positions need not run.

    ``model`` is a causal LM, possibly under PEFT or Accelerate wrappers. Found:

    * its MLP where it is a plain position-wise MLP: only modules whose class
      name ends in ``MLP`` (LlamaMLP, GPT2MLP, Qwen2MLP, MistralMLP, GemmaMLP,
      PhiMLP, Phi3MLP, ...) qualify; mixture-of-experts blocks route tokens
      jointly and return router logits, so they keep the full computation;
    * its attention's query and output projections, where they are separate
      linear layers (a fused ``qkv_proj`` / ``c_attn`` keeps its keys and values,
      so it runs in full).

    A model whose blocks cannot be found gets ``[]`` (everything runs in full),
    as does one under activation checkpointing: its backward recomputes the
    block without the hooks, so the shapes would not match.
    """
    try:
        last = blocks_of(model)[-1]
    except (ValueError, AttributeError):
        return []
    if getattr(last, "gradient_checkpointing", False):
        return []
    modules: list[torch.nn.Module] = []
    mlp = getattr(last, "mlp", None)
    if isinstance(mlp, torch.nn.Module) and type(mlp).__name__.endswith("MLP"):
        modules.append(mlp)
    attention = getattr(last, "self_attn", None) or getattr(last, "attn", None)
    if isinstance(attention, torch.nn.Module):
        for names in (_QUERY_PROJECTIONS, _OUTPUT_PROJECTIONS):
            layer = next((getattr(attention, n) for n in names if hasattr(attention, n)), None)
            if isinstance(layer, torch.nn.Module) and type(layer).__name__ in _POSITIONWISE_LAYERS:
                modules.append(layer)
    return modules


@contextlib.contextmanager
def run_only_at(modules: Sequence[torch.nn.Module], index: torch.Tensor) -> Iterator[None]:
    """Within the block, each position-wise module runs only at sequence positions ``index``.

    ``index`` holds positions along the sequence dimension (dim 1), the same in
    every batch row. Each module's input is cut to them before it runs and its
    output put back into a zero tensor of the full length: positions elsewhere
    must never be read (their last-block states are not returned, and no later
    block exists; a zero query at such a position changes only that position's
    attention). Differentiable: in training, gradients flow through the cut.
    """
    handles = []
    for module in modules:
        full: list[torch.Size] = []

        def cut(module: torch.nn.Module, args: tuple, full: list[torch.Size] = full) -> tuple:
            hidden = args[0]
            full.append(hidden.shape[:2])
            return (hidden[:, index], *args[1:])

        def restore(
            module: torch.nn.Module, args: tuple, output: Any, full: list[torch.Size] = full
        ) -> Any:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"{type(module).__name__} returned {type(output).__name__}")
            out = output.new_zeros((*full.pop(), *output.shape[2:]))
            out[:, index] = output
            return out

        handles += [module.register_forward_pre_hook(cut), module.register_forward_hook(restore)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
