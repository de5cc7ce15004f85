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
    """Tuning destroyed the model (see :class:`DivergenceGuard`): the settings do not train.

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
        why: str = "",
    ):
        self.step = step
        self.value = value
        self.what = what
        self.set_index = set_index
        in_set = f" of demonstration set {set_index}" if set_index is not None else ""
        hint = f" (now {learning_rate:g})" if learning_rate is not None else ""
        because = f" ({why})" if why else ""
        super().__init__(
            f"the {what}{in_set} is {value:.4g} at step {step}{because}: training diverged; "
            f"lower the learning rate{hint} or check the model weights and data",
            where="tuning",
        )


GROWTH_LIMIT = 1e4
"""A gradient or trainable-parameter norm this many times its first value is an explosion."""

LOSS_WINDOW = 3
"""Steps whose mean loss the loss limit judges (one step's loss is one small batch's)."""


class DivergenceGuard:
    """Decides, step by step, whether a tuning run has destroyed its model (one set's run).

    Every loop (per-set, batched many-set, multi-task; decide tunes through the
    batched one) feeds it the same three numbers, so all stop on the same rule.
    With ``first`` the first step's loss and ``U = ln V`` the loss of uniform output
    over the V-token vocabulary:

    * **loss**: not finite (at once), or, at the last step (``total_steps``; every
      step where it is not given), its mean over the last :data:`LOSS_WINDOW` steps
      above a limit. The model that comes out is what is destroyed or not: healthy
      runs at a high learning rate spike and recover (a `world-small` LoRA set at
      lr 1e-2: 1.89, ..., 10.06, 7.84, 3.42, 1.75, 1.27, 0.85, then 100% label
      accuracy), and one step's loss is one small batch's. A model that knows its
      targets (``first <= U / 2``: targets at least sqrt(V) times likelier than a
      uniform guess) is destroyed once that mean is three quarters of the way (in
      nats) from ``first`` to ``U``: it has lost most of what it knew, the way to
      "empty predictions, loss at ln V". Any other model is destroyed above ``max(first, U) + U``:
      the targets then get less than 1/V of the probability they had, or of a
      uniform guess's.
    * **gradient norm** (before clipping): not finite, or more than :data:`GROWTH_LIMIT`
      times the first non-zero one.
    * **trainable-parameter norm** (after each update): not finite, or more than
      :data:`GROWTH_LIMIT` times its value before training. AdamW's first update
      moves every weight by the learning rate, so an absurd learning rate is caught
      at step 1 whatever the CPU then does with the overflow (a blow-up that stays
      finite, e.g. renormalised by RMSNorm, included).

    A run of one step has no later loss to judge; the norms still apply.
    """

    def __init__(
        self,
        config: TuningConfig,
        vocabulary: int,
        set_index: int | None = None,
        total_steps: int | None = None,
    ) -> None:
        self.config = config
        self.total_steps = total_steps
        self.uniform = math.log(max(2, vocabulary))
        self.set_index = set_index
        self.first_loss: float | None = None
        self.recent_losses: list[float] = []
        self.first_grad: float | None = None
        self.first_params: float | None = None

    def _fail(self, step: int, value: float, what: str, why: str = "") -> None:
        raise TuningDivergedError(
            step,
            value,
            what=what,
            set_index=self.set_index,
            learning_rate=self.config.learning_rate,
            why=why,
        )

    def loss_limit(self) -> float:
        """The highest loss a step may have, once the first step's loss is known."""
        first = self.first_loss if self.first_loss is not None else self.uniform
        if first <= self.uniform / 2:
            return first + 0.75 * (self.uniform - first)
        return max(first, self.uniform) + self.uniform

    def loss(self, step: int, value: float) -> None:
        if not math.isfinite(value):
            self._fail(step, value, "loss")
        self.recent_losses = [*self.recent_losses, value][-LOSS_WINDOW:]
        level = sum(self.recent_losses) / len(self.recent_losses)
        last = self.total_steps is None or step >= self.total_steps
        if self.first_loss is None:
            self.first_loss = value
        elif last and level > self.loss_limit():
            self._fail(
                step,
                level,
                f"mean loss of the last {len(self.recent_losses)} steps",
                f"first {self.first_loss:.3g}, limit {self.loss_limit():.3g}, "
                f"uniform output {self.uniform:.3g}",
            )

    def _growth(self, step: int, value: float, first: float | None, what: str) -> None:
        if not math.isfinite(value):
            self._fail(step, value, what)
        if first and value > GROWTH_LIMIT * first:
            self._fail(step, value, what, f"{value / first:.3g} times its first value {first:.3g}")

    def grad_norm(self, step: int, value: float) -> None:
        self._growth(step, value, self.first_grad, "gradient norm")
        if not self.first_grad and value > 0:
            self.first_grad = value

    def param_norm(self, step: int, value: float) -> None:
        """``step`` 0 records the norm before training; later steps check it after updates."""
        if step == 0:
            self.first_params = value if math.isfinite(value) else None
            if self.first_params is None:
                self._fail(0, value, "trainable-parameter norm")
            return
        self._growth(step, value, self.first_params, "trainable-parameter norm")


def vocabulary_size(loaded: LoadedModel) -> int:
    """V of the output distribution (the LM head's rows), for the uniform loss ln V."""
    model = loaded.model
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    rows = getattr(head, "out_features", None) or getattr(
        getattr(model, "config", None), "vocab_size", None
    )
    return int(rows or len(loaded.tokenizer))


def sum_on_cpu(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sum of equally shaped tensors that may sit on several devices (dispatched models),
    one transfer per device."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for part in parts:
        by_device.setdefault(part.device, []).append(part.float())
    sums = [torch.stack(group).sum(0).cpu() for group in by_device.values()]
    return torch.stack(sums).sum(0)


def parameter_norm(params: Sequence[torch.Tensor]) -> float:
    """The L2 norm of all ``params`` together (inf where it overflows float32)."""
    with torch.no_grad():
        squares = [p.detach().float().pow(2).sum() for p in params]
        return float(sum_on_cpu(squares).sqrt())


def data_order_generator(seed: int) -> torch.Generator:
    """The seeded generator of the training data's order: every loop draws its shuffles from
    this stream, so sequential, batched and multi-task runs of one seed see one order."""
    return torch.Generator().manual_seed(seed * 7919 + _DATA_STREAM)


def step_batches(n: int, config: TuningConfig, seed: int | None = None) -> list[list[int]]:
    """The pair indices of every optimizer step: a seeded permutation per epoch, in chunks.

    Depends only on (n, seed, epochs, batch_size, max_steps, shuffle), so a
    sequential run and a batched many-set run see the same batches per set.
    """
    generator = data_order_generator(config.seed if seed is None else seed)
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


def lr_lambda(config: TuningConfig, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor of each step (``LambdaLR``): linear decay to 0, or constant."""
    if config.lr_schedule == "linear":
        return lambda step: max(0.0, 1.0 - step / max(1, total_steps))
    return lambda step: 1.0


# Devices with torch's fused AdamW kernel (one kernel for all tensors instead of a loop of small
# ones per tensor); TRL and transformers' Trainer default to it ("adamw_torch_fused").
_FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def make_optimizer(
    params: Sequence[torch.nn.Parameter], config: TuningConfig
) -> torch.optim.Optimizer:
    """AdamW, fused where every parameter is a floating tensor on a CPU or CUDA device."""
    fused = all(p.device.type in _FUSED_ADAMW_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(
        params,
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        fused=fused or None,
    )


def set_train_mode(model: torch.nn.Module, config: TuningConfig) -> None:
    """Model dropout per ``model_dropout``; LoRA dropout always follows ``lora_dropout``."""
    model.train(config.model_dropout)
    if not config.model_dropout:
        for name, module in model.named_modules():
            if name.endswith("lora_dropout"):
                module.train()


def encode_training_pairs(
    loaded: LoadedModel,
    pairs: Sequence[tuple[str, str]],
    config: TuningConfig,
    names: Sequence[str] | None,
) -> list[EncodedPair]:
    """The pairs as token ids for ``loaded`` (EOS per ``add_eos``, never truncated);
    no pairs at all is an input error."""
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
