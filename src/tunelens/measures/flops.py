"""FLOPs of a decoder's forward pass and of training: one convention for all of tunelens.

Source: Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Table 1
(section 2.1). Per token, a forward pass costs

    C_forward ~= 2 N + 2 n_layer n_ctx d_attn

with N the **non-embedding** parameters (attention and feed-forward weights of
every layer; the token and position embeddings and the de-embedding are left
out), n_layer the layers, n_ctx the positions the token attends to and d_attn
the attention width (heads x head size, d_model for the usual shapes).
Training costs three forward passes: the backward pass computes gradients for
the activations and for the weights, each as much as the forward
(C ~= 6 N per token when the context term is small).

The convention, precisely:

* one multiply-accumulate counts 2 FLOPs; only matrix products are counted
  (not norms, softmax, activations, rotary embeddings or the optimiser step);
* ``2 N`` per token for the weights; the de-embedding (LM head, d_model x
  n_vocab) is left out as in Kaplan's C_forward unless a caller sets
  :attr:`ModelShape.head` (a benchmark measuring utilisation does: it is real
  work);
* the attention term is Kaplan's "Attention: Mask" row, the QK logits only
  (softmax x V would add as much again), counted causally: the token at
  position t (1-based) attends to n_ctx = t positions, itself included. A
  sequence of T tokens therefore costs
  ``sum_t (2 N + 2 L d t) = 2 N T + L d T (T + 1)``. A key/value cache does not
  change the count: generating after a prompt costs one pass over prompt +
  answer;
* ``attention=False`` drops the context term (Kaplan's C ~= 2 N per token,
  accurate when d_model > n_ctx / 12): for token totals over many sequences of
  unknown length;
* training = forward x 3 when all weights are trained (``weights="full"``);
  with frozen base weights (LoRA, ``weights="frozen"``) the backward pass
  computes activation gradients only: forward x 2 (the adapters' own small
  products are ignored). Callers that budget (``tunelens plan``, ``decide``)
  keep ``"full"`` for LoRA too: an upper bound.

tests/unit/test_flops.py checks these figures against
``torch.utils.flop_counter.FlopCounterMode`` on a tiny Llama.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Weights = Literal["full", "frozen"]

#: Forward-pass equivalents of one training step per token: forward + backward.
TRAINING_PASSES: dict[str, float] = {"full": 3.0, "frozen": 2.0}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs: non-embedding parameters N, layers L, attention width d.

    ``head`` is the de-embedding's weight count, added to N when a caller wants
    the LM head's product counted (0: Kaplan's convention, left out).
    """

    non_embedding: int
    layers: int = 0
    width: int = 0
    head: int = 0

    def to_json(self) -> dict[str, int]:
        out = {
            "non_embedding_parameters": self.non_embedding,
            "layers": self.layers,
            "width": self.width,
        }
        if self.head:
            out["head_parameters"] = self.head
        return out


def forward_flops_per_token(shape: ModelShape, context: float = 0.0) -> float:
    """Kaplan's C_forward for one token attending to ``context`` positions."""
    return 2.0 * (shape.non_embedding + shape.head) + 2.0 * shape.layers * context * shape.width


def forward_flops(tokens: float, shape: ModelShape, *, attention: bool = True) -> float:
    """FLOPs of one causal forward pass over ``tokens`` tokens: ``2 N T + L d T (T + 1)``.

    With ``attention=False``: ``2 N T``, which also holds for a total of tokens
    over many sequences.
    """
    t = float(tokens)
    flops = 2.0 * (shape.non_embedding + shape.head) * t
    if attention:
        flops += shape.layers * shape.width * t * (t + 1.0)
    return flops


def training_flops(
    tokens: float, shape: ModelShape, *, weights: Weights = "full", attention: bool = True
) -> float:
    """FLOPs of one training step (forward + backward) over ``tokens`` tokens of a sequence."""
    if weights not in TRAINING_PASSES:
        raise ValueError(f"weights must be 'full' or 'frozen', got {weights!r}")
    return TRAINING_PASSES[weights] * forward_flops(tokens, shape, attention=attention)
