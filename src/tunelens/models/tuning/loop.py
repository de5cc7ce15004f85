"""What every training loop shares: step schedule, optimizer, train mode, checks, encoding."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from tunelens.errors import DivergedError, TunelensInputError
from tunelens.models.batching import EncodedPair, context_length, encode_pairs
from tunelens.models.loading import LoadedModel
from tunelens.models.tuning.config import TuningConfig

# The seeded stream of the training data's order (LoRA initial weights use another).
_DATA_STREAM = 0x5EED


class TuningDivergedError(DivergedError):
    """The training loss (or gradient norm) became NaN or infinite: the settings do not train.

    A TunelensInputError (through DivergedError) because the cure is in the user's hands (a
    lower learning rate, other data, a model without broken weights), so the CLI
    reports it on one line with exit status 2.
    """

    def __init__(
        self,
        step: int,
        value: float,
        *,
        what: str = "loss",
        set_index: int | None = None,
        learning_rate: float | None = None,
    ):
        self.step = step
        self.value = value
        self.set_index = set_index
        in_set = f" of demonstration set {set_index}" if set_index is not None else ""
        hint = f" (now {learning_rate:g})" if learning_rate is not None else ""
        super().__init__(
            f"the {what}{in_set} is {value} at step {step}: training diverged; lower the "
            f"learning rate{hint} or check the model weights and data",
            where="tuning",
        )


def step_batches(n: int, config: TuningConfig, seed: int | None = None) -> list[list[int]]:
    """The pair indices of every optimizer step: a seeded permutation per epoch, in chunks.

    Depends only on (n, seed, epochs, batch_size, max_steps, shuffle), so a
    sequential run and a batched many-set run see the same batches per set.
    """
    generator = torch.Generator().manual_seed(
        (config.seed if seed is None else seed) * 7919 + _DATA_STREAM
    )
    steps: list[list[int]] = []
    for _ in range(config.epochs):
        order = (
            torch.randperm(n, generator=generator).tolist() if config.shuffle else list(range(n))
        )
        for start in range(0, n, config.batch_size):
            steps.append(order[start : start + config.batch_size])
            if config.max_steps is not None and len(steps) >= config.max_steps:
                return steps
    return steps


def _lr_lambda(config: TuningConfig, total_steps: int) -> Callable[[int], float]:
    if config.lr_schedule == "linear":
        return lambda step: max(0.0, 1.0 - step / max(1, total_steps))
    return lambda step: 1.0


# Devices with torch's fused AdamW kernel (one kernel for all tensors instead of a loop of small
# ones per tensor); TRL and transformers' Trainer default to it ("adamw_torch_fused").
_FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def _optimizer(params: Sequence[torch.nn.Parameter], config: TuningConfig) -> torch.optim.Optimizer:
    """AdamW, fused where every parameter is a floating tensor on a CPU or CUDA device."""
    fused = all(p.device.type in _FUSED_ADAMW_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(
        params,
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        fused=fused or None,
    )


def _set_train_mode(model: torch.nn.Module, config: TuningConfig) -> None:
    """Model dropout per ``model_dropout``; LoRA dropout always follows ``lora_dropout``."""
    model.train(config.model_dropout)
    if not config.model_dropout:
        for name, module in model.named_modules():
            if name.endswith("lora_dropout"):
                module.train()


def _check_finite(
    value: torch.Tensor | float,
    step: int,
    config: TuningConfig,
    what: str,
    set_index: int | None = None,
) -> None:
    number = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(number):
        raise TuningDivergedError(
            step, number, what=what, set_index=set_index, learning_rate=config.learning_rate
        )


def _encode(
    loaded: LoadedModel,
    pairs: Sequence[tuple[str, str]],
    config: TuningConfig,
    names: Sequence[str] | None,
) -> list[EncodedPair]:
    if not pairs:
        raise TunelensInputError("no training pairs to tune on", where="tuning")
    return encode_pairs(
        loaded.tokenizer,
        pairs,
        kind=loaded.kind,
        add_eos=config.add_eos,
        max_length=context_length(loaded.model),
        names=names,
    )
