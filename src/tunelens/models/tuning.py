"""Instruction tuning: LoRA or full fine-tuning on (prompt, target) pairs, loss on targets only.

Three entry points, one per way the experiments tune:

* :func:`tune_on_pairs` fine-tunes the loaded model on one small set (the k
  demonstrations of a convergence cell) with a plain, seeded loop.
* :func:`tune_many_sets` runs many such fine-tunes at once: one LoRA adapter per
  set, all sets stacked along the batch dimension in one forward/backward
  (a batched LoRA module with per-set A/B matrices applied by ``torch.bmm``).
  Its adapters equal those of sequential :func:`tune_on_pairs` runs with the
  same seeds and settings (up to float rounding).
* :func:`multitask_tune` tunes on a large multi-task mixture through Hugging
  Face Accelerate, so ``accelerate launch`` with DeepSpeed / FSDP configs spreads
  it over many GPUs without code changes.

One loaded model serves both the base and the tuned state. LoRA wraps the
loaded model itself with PEFT (no second copy of the base weights); the
returned :class:`TunedModel` can switch the adapter off
(:meth:`TunedModel.adapter_disabled`) and :meth:`TunedModel.unload` removes the
adapter layers without merging, leaving the base model bit-identical to before.
Full fine-tuning changes the weights in place, so it keeps one CPU copy of the
original state dict and restores it on ``unload()``: the only place a second
copy of the weights exists.

Determinism: a seed fixes the LoRA initialisation (drawn from a seeded
generator, identical for sequential and batched tuning), the data order (a
seeded permutation per epoch) and ``torch.manual_seed`` for anything else.
The model's own dropout is off while tuning unless ``model_dropout`` is set,
so results do not depend on how examples are batched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from tunelens.errors import TunelensInputError
from tunelens.models.batching import (
    EncodedPair,
    collate,
    context_length,
    encode_pairs,
    forward_logits,
    label_counts,
    masked_lm_loss,
    token_losses,
)
from tunelens.models.loading import LoadedModel

AdapterState = dict[str, torch.Tensor]

DEFAULT_TARGET_MODULES = ("q_proj", "v_proj")

# Attention projections per architecture where the q_proj / v_proj default names nothing;
# peft's own table (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING) is consulted after.
FALLBACK_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn",),
    "t5": ("q", "v"),
    "mt5": ("q", "v"),
    "umt5": ("q", "v"),
    "gpt_neox": ("query_key_value",),
    "bloom": ("query_key_value",),
    "falcon": ("query_key_value",),
}

# Separate seeded streams: LoRA initial weights, and the order of the training data.
_INIT_STREAM = 0
_DATA_STREAM = 0x5EED


class TuningConfig(BaseModel):
    """How a model is tuned; every field's description doubles as CLI / spec help."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["lora", "full"] = Field(
        "lora", description="'lora': low-rank adapters on target_modules; 'full': all weights."
    )
    lora_r: int = Field(8, ge=1, description="LoRA rank (columns of A, rows of B).")
    lora_alpha: float = Field(
        16, gt=0, description="LoRA scaling numerator: the update is scaled by alpha / r."
    )
    lora_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on the LoRA input (0 keeps batched tuning "
        "equal to sequential tuning).",
    )
    target_modules: list[str] = Field(
        list(DEFAULT_TARGET_MODULES),
        min_length=1,
        description="Module names (suffixes) that get adapters. With the default q_proj/v_proj, "
        "architectures that name them otherwise fall back to their own attention projections "
        "(GPT-2 c_attn, T5 q/v, GPT-NeoX/BLOOM/Falcon query_key_value).",
    )
    learning_rate: float = Field(
        1e-3,
        gt=0,
        description="AdamW learning rate (1e-3 suits LoRA; full fine-tuning wants "
        "about 1e-5 to 5e-5).",
    )
    lr_schedule: Literal["constant", "linear"] = Field(
        "constant", description="Constant learning rate, or linear decay to 0 over the steps."
    )
    epochs: int = Field(10, ge=1, description="Passes over the tuning pairs.")
    batch_size: int = Field(8, ge=1, description="Pairs per optimizer step (per process).")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (before the epochs end)."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW decoupled weight decay.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the gradient norm to this value; empty turns clipping off."
    )
    seed: int = Field(0, description="Seeds LoRA initialisation, data order and dropout.")
    shuffle: bool = Field(True, description="Reshuffle the pairs each epoch (seeded).")
    add_eos: bool = Field(
        True,
        description="Append the tokenizer's end-of-sequence token to each target, so the "
        "tuned model learns to stop.",
    )
    model_dropout: bool = Field(
        False,
        description="Keep the model's own dropout layers active while tuning (off: "
        "deterministic and independent of batching).",
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        description="Micro-batches per optimizer step in multitask_tune (when it "
        "creates the Accelerator).",
    )
    save_steps: int | None = Field(
        None, ge=1, description="multitask_tune: also checkpoint every this many steps."
    )


class TuningDivergedError(TunelensInputError):
    """The training loss (or gradient norm) became NaN or infinite: the settings do not train.

    A subclass of TunelensInputError because the cure is in the user's hands (a
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


# ---------------------------------------------------------------------------
# Target modules and LoRA initialisation (shared by sequential and batched tuning)


def _adaptable(module: torch.nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, torch.nn.Linear | Conv1D)


def _is_conv1d(module: torch.nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def target_module_names(model: torch.nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the Linear / Conv1D modules matched by ``targets`` (PEFT's suffix rule)."""
    return [
        name
        for name, module in model.named_modules()
        if _adaptable(module) and any(name == t or name.endswith(f".{t}") for t in targets)
    ]


def resolve_target_modules(model: torch.nn.Module, requested: Sequence[str]) -> list[str]:
    """``requested`` if it names modules of ``model``, else the architecture's fallback.

    Fallbacks apply only to the default (q_proj, v_proj); a user's own list that
    matches nothing is an input error listing what the model has.
    """
    if target_module_names(model, requested):
        return list(requested)
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if tuple(requested) == DEFAULT_TARGET_MODULES:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        for candidate in (
            FALLBACK_TARGET_MODULES.get(model_type),
            TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type),
        ):
            if candidate and target_module_names(model, candidate):
                return list(candidate)
    suffixes = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _adaptable(m)})
    raise TunelensInputError(
        f"no module of this {model_type or 'model'} matches target_modules {list(requested)}; "
        f"its linear layers end in: {', '.join(suffixes[:16])}",
        where="tuning.target_modules",
    )


def _module_shapes(model: torch.nn.Module, names: Sequence[str]) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of each target; Conv1D stores its weight as [in, out]."""
    modules = dict(model.named_modules())
    shapes = []
    for name in names:
        weight = modules[name].weight
        fan_in, fan_out = (
            (weight.shape[0], weight.shape[1])
            if _is_conv1d(modules[name])
            else (weight.shape[1], weight.shape[0])
        )
        shapes.append((name, int(fan_in), int(fan_out)))
    return shapes


def _adapter_key(module_name: str, matrix: str) -> str:
    """The key PEFT's ``get_peft_model_state_dict`` uses for a LoRA matrix of a module."""
    return f"base_model.model.{module_name}.{matrix}.weight"


def initial_lora_state(shapes: Sequence[tuple[str, int, int]], r: int, seed: int) -> AdapterState:
    """LoRA starting weights from a seeded generator: A ~ U(+-1/sqrt(in)), B = 0.

    The same distribution as PEFT's default (Kaiming-uniform with a = sqrt(5)),
    but drawn from ``torch.Generator(seed)`` on the CPU in module order, so that
    sequential and batched tuning start from identical adapters on any device.
    """
    generator = torch.Generator().manual_seed(seed * 7919 + _INIT_STREAM)
    state: AdapterState = {}
    for name, fan_in, fan_out in shapes:
        bound = 1.0 / math.sqrt(fan_in)
        a = (torch.rand(r, fan_in, generator=generator) * 2.0 - 1.0) * bound
        state[_adapter_key(name, "lora_A")] = a
        state[_adapter_key(name, "lora_B")] = torch.zeros(fan_out, r)
    return state


def _adapter_dtype(model: torch.nn.Module) -> torch.dtype:
    """float32 adapters on half-precision bases (as PEFT's autocast_adapter_dtype does)."""
    dtype = next(model.parameters()).dtype
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


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


def _optimizer(params: Sequence[torch.nn.Parameter], config: TuningConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


# ---------------------------------------------------------------------------
# The tuned model: one loaded model, base and tuned states


@dataclass
class _SavedFlags:
    """What tuning changes on the base module and unload() puts back."""

    requires_grad: dict[str, bool]
    training: bool

    @classmethod
    def of(cls, model: torch.nn.Module) -> _SavedFlags:
        return cls({n: p.requires_grad for n, p in model.named_parameters()}, model.training)

    def restore(self, model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            param.grad = None
            if name in self.requires_grad:
                param.requires_grad_(self.requires_grad[name])
        model.train(self.training)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the state dict; tied weights are copied once."""
    copies: dict[int, torch.Tensor] = {}
    state = {}
    for key, value in model.state_dict().items():
        ptr = value.data_ptr()
        if ptr not in copies:
            copies[ptr] = value.detach().to("cpu", copy=True)
        state[key] = copies[ptr]
    return state


@dataclass
class TunedModel:
    """The loaded model in its tuned state, reversible.

    ``model`` is the PEFT model (LoRA) or the base module with tuned weights
    (full). Until :meth:`unload`, the loaded base module carries the adapter
    layers / tuned weights; use :meth:`adapter_disabled` for base outputs.
    """

    loaded: LoadedModel = field(repr=False)
    model: Any = field(repr=False)
    method: Literal["lora", "full"]
    losses: list[float] = field(default_factory=list, repr=False)
    _flags: _SavedFlags | None = field(default=None, repr=False)
    _base_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    _unloaded: bool = False

    @property
    def steps(self) -> int:
        """Optimizer steps taken."""
        return len(self.losses)

    def _check_live(self) -> None:
        if self._unloaded:
            raise RuntimeError("this tuned model was unloaded; tune again to get a new one")

    def as_loaded(self) -> LoadedModel:
        """The tuned model as a LoadedModel, for hidden states and predictions."""
        self._check_live()
        return LoadedModel(
            model=self.model,
            tokenizer=self.loaded.tokenizer,
            kind=self.loaded.kind,
            name=f"{self.loaded.name} ({self.method}-tuned)",
        )

    @contextmanager
    def adapter_disabled(self) -> Iterator[LoadedModel]:
        """Within the block, the model computes the base model's outputs.

        LoRA: PEFT's ``disable_adapter()`` (free). Full: the original weights are
        loaded in and the tuned ones put back afterwards (two state-dict copies).
        """
        self._check_live()
        if self.method == "lora":
            with self.model.disable_adapter():
                yield self.as_loaded()
            return
        tuned_state = _cpu_state(self.model)
        self.model.load_state_dict(self._base_state)
        try:
            yield self.as_loaded()
        finally:
            self.model.load_state_dict(tuned_state)

    def adapter_state(self) -> AdapterState:
        """A CPU copy of the LoRA weights in PEFT's state-dict format (LoRA only)."""
        self._check_live()
        if self.method != "lora":
            raise ValueError("adapter_state() is for LoRA; full fine-tuning has no adapter")
        from peft import get_peft_model_state_dict

        return {
            k: v.detach().to("cpu", copy=True)
            for k, v in get_peft_model_state_dict(self.model).items()
        }

    def load_adapter_state(self, state: AdapterState) -> None:
        """Put another adapter's weights (e.g. one of :func:`tune_many_sets`) into this model."""
        self._check_live()
        if self.method != "lora":
            raise ValueError("load_adapter_state() is for LoRA models")
        load_adapter_state(self.model, state)

    def save(self, directory: str | Path) -> Path:
        """LoRA: ``save_pretrained`` (adapter_config.json + adapter_model.safetensors).

        Full: the model in Hugging Face format (config + safetensors) and its
        tokenizer, loadable again with ``load_model``.
        """
        self._check_live()
        directory = Path(directory)
        self.model.save_pretrained(directory)
        if self.method == "full":
            self.loaded.tokenizer.save_pretrained(directory)
        return directory

    def unload(self) -> LoadedModel:
        """Restore the plain base model (LoRA layers removed without merging; full: old weights).

        Afterwards ``loaded.model`` computes exactly what it did before tuning.
        Calling it twice is harmless.
        """
        if self._unloaded:
            return self.loaded
        if self.method == "lora":
            self.model.unload()
        elif self._base_state is not None:
            self.model.load_state_dict(self._base_state)
            self._base_state = None
        if self._flags is not None:
            self._flags.restore(self.loaded.model)
        self.loaded.model.eval()
        self._unloaded = True
        return self.loaded


def _task_type(kind: str) -> Any:
    from peft import TaskType

    return TaskType.SEQ_2_SEQ_LM if kind == "seq2seq" else TaskType.CAUSAL_LM


def _check_plain(loaded: LoadedModel) -> None:
    from peft import PeftModel

    if isinstance(loaded.model, PeftModel):
        raise ValueError(
            "the loaded model already carries an adapter; unload() the previous TunedModel "
            "before tuning again"
        )


def attach_lora(
    loaded: LoadedModel, config: TuningConfig, state: AdapterState | None = None
) -> TunedModel:
    """Wrap the loaded model with a PEFT LoRA adapter (no weight copy); seeded initial weights.

    ``state`` loads given adapter weights instead (e.g. from :func:`tune_many_sets`).
    The returned TunedModel has no training history; call ``unload()`` when done.
    """
    from peft import LoraConfig, get_peft_model

    _check_plain(loaded)
    base = loaded.model
    targets = resolve_target_modules(base, config.target_modules)
    names = target_module_names(base, targets)
    modules = dict(base.named_modules())
    shapes = _module_shapes(base, names)  # before PEFT replaces the modules
    flags = _SavedFlags.of(base)
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        fan_in_fan_out=any(_is_conv1d(modules[n]) for n in names),
        bias="none",
        task_type=_task_type(loaded.kind),
    )
    peft_model = get_peft_model(base, lora_config)
    tuned = TunedModel(loaded=loaded, model=peft_model, method="lora", _flags=flags)
    try:
        init = (
            state if state is not None else initial_lora_state(shapes, config.lora_r, config.seed)
        )
        load_adapter_state(peft_model, init)
    except Exception:
        tuned.unload()
        raise
    peft_model.eval()
    return tuned


def load_adapter_state(peft_model: Any, state: AdapterState) -> None:
    """Copy LoRA weights (PEFT state-dict format) into a PEFT model; keys must match exactly."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    expected = set(get_peft_model_state_dict(peft_model))
    if set(state) != expected:
        missing = sorted(expected - set(state))[:3]
        unexpected = sorted(set(state) - expected)[:3]
        raise ValueError(
            f"adapter state does not fit this model: missing {missing}, unexpected {unexpected}"
        )
    set_peft_model_state_dict(peft_model, state)


def _prepare_full(loaded: LoadedModel) -> TunedModel:
    """Full fine-tuning: keep a CPU copy of the weights for unload(), make all weights trainable."""
    _check_plain(loaded)
    model = loaded.model
    tuned = TunedModel(
        loaded=loaded,
        model=model,
        method="full",
        _flags=_SavedFlags.of(model),
        _base_state=_cpu_state(model),
    )
    for param in model.parameters():
        param.requires_grad_(True)
    return tuned


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


# ---------------------------------------------------------------------------
# One small fine-tune


def tune_on_pairs(
    loaded: LoadedModel,
    pairs: Sequence[tuple[str, str]],
    config: TuningConfig,
    *,
    names: Sequence[str] | None = None,
) -> TunedModel:
    """Fine-tune the loaded model on (prompt, target) pairs; loss on target tokens only.

    A plain seeded loop (AdamW, gradient clipping, optional linear decay) on the
    model's device. Returns a TunedModel; call its ``unload()`` before tuning the
    same loaded model again. ``names`` (e.g. ``"task/instance"``) label pairs in
    error messages. Raises TunelensInputError for a pair that does not fit the
    context and TuningDivergedError when the loss or gradient norm is not finite.
    """
    encoded = _encode(loaded, pairs, config, names)
    tuned = attach_lora(loaded, config) if config.method == "lora" else _prepare_full(loaded)
    try:
        _train_plain(tuned, encoded, config)
    except BaseException:
        tuned.unload()
        raise
    return tuned


def _train_plain(tuned: TunedModel, encoded: Sequence[EncodedPair], config: TuningConfig) -> None:
    model, loaded = tuned.model, tuned.loaded
    pad_id = loaded.tokenizer.pad_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    schedule = step_batches(len(encoded), config)
    optimizer = _optimizer(params, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, len(schedule)))
    torch.manual_seed(config.seed)
    _set_train_mode(model, config)
    try:
        for step, indices in enumerate(schedule, start=1):
            batch = {
                k: v.to(loaded.device)
                for k, v in collate([encoded[i] for i in indices], pad_id, loaded.kind).items()
            }
            loss = masked_lm_loss(model, batch, loaded.kind, pad_id)
            _check_finite(loss, step, config, "loss")
            loss.backward()
            if config.max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                _check_finite(norm, step, config, "gradient norm")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tuned.losses.append(float(loss.detach()))
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.eval()


# ---------------------------------------------------------------------------
# Many small fine-tunes at once


class BatchedLoraLinear(torch.nn.Module):
    """A frozen linear layer plus one LoRA update per example set, applied by batched matmul.

    The batch holds ``n_sets`` equal blocks of rows, set-major; block s gets
    ``base(x) + B_s A_s dropout(x) * alpha / r``, exactly PEFT's LoRA forward.
    Works for inputs shaped [batch, ..., in] and for token-flattened [batch * seq, in].
    """

    def __init__(
        self,
        base: torch.nn.Module,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
        dropout: float,
    ):
        super().__init__()
        self.base = base
        self.lora_A = torch.nn.Parameter(lora_a)  # [sets, r, in]
        self.lora_B = torch.nn.Parameter(lora_b)  # [sets, out, r]
        self.scaling = scaling
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base(x, *args, **kwargs)
        result_dtype = result.dtype
        n_sets = self.lora_A.shape[0]
        xs = self.dropout(x.to(self.lora_A.dtype)).reshape(n_sets, -1, x.shape[-1])
        hidden = torch.bmm(xs, self.lora_A.transpose(1, 2))
        delta = torch.bmm(hidden, self.lora_B.transpose(1, 2)) * self.scaling
        return (result + delta.reshape(result.shape)).to(result_dtype)


@contextmanager
def batched_lora(
    model: torch.nn.Module,
    names: Sequence[str],
    states: Sequence[AdapterState],
    config: TuningConfig,
) -> Iterator[list[BatchedLoraLinear]]:
    """Within the block, each named module of ``model`` carries one LoRA adapter per state.

    The original modules are put back on exit; base weights are never written.
    """
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    dtype = _adapter_dtype(model)
    scaling = config.lora_alpha / config.lora_r
    wrapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    layers = []
    try:
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = modules[parent_name] if parent_name else model
            base = modules[name]
            stack = [
                torch.stack([s[_adapter_key(name, m)] for s in states]).to(device, dtype)
                for m in ("lora_A", "lora_B")
            ]
            layer = BatchedLoraLinear(base, stack[0], stack[1], scaling, config.lora_dropout)
            setattr(parent, child, layer)
            wrapped.append((parent, child, base))
            layers.append(layer)
        yield layers
    finally:
        for parent, child, base in reversed(wrapped):
            setattr(parent, child, base)


def tune_many_sets(
    loaded: LoadedModel,
    sets: Sequence[Sequence[tuple[str, str]]],
    config: TuningConfig,
    *,
    seeds: Sequence[int] | None = None,
    sets_per_batch: int | None = None,
) -> list[AdapterState]:
    """One LoRA fine-tune per set of pairs, all at once; returns each set's adapter weights.

    Sets with the same number of pairs take the same number of steps with the
    same batch sizes, so they train in lockstep: their batches are stacked along
    the batch dimension and a :class:`BatchedLoraLinear` gives each its own
    adapter in one forward/backward. Losses are normalised and gradients
    clipped per set, and AdamW is elementwise, so set i ends where
    ``tune_on_pairs(loaded, sets[i], config with seed=seeds[i])`` ends (equal up
    to float rounding; exactly only with ``lora_dropout`` 0 and
    ``model_dropout`` off, the defaults). ``seeds`` defaults to ``config.seed``
    for every set; ``sets_per_batch`` bounds memory by training that many sets
    at a time. Load a result with :meth:`TunedModel.load_adapter_state` or
    :func:`attach_lora`. The base model is left untouched.
    """
    if config.method != "lora":
        raise TunelensInputError(
            "tune_many_sets tunes LoRA adapters; method must be 'lora'", where="tuning.method"
        )
    _check_plain(loaded)
    seeds = [config.seed] * len(sets) if seeds is None else list(seeds)
    if len(seeds) != len(sets):
        raise ValueError(f"{len(seeds)} seeds for {len(sets)} sets")
    encoded = [_encode(loaded, pairs, config, None) for pairs in sets]
    base = loaded.model
    names = target_module_names(base, resolve_target_modules(base, config.target_modules))
    shapes = _module_shapes(base, names)
    groups: dict[int, list[int]] = {}
    for i, pairs in enumerate(encoded):
        groups.setdefault(len(pairs), []).append(i)
    chunk = sets_per_batch or len(sets)
    results: list[AdapterState | None] = [None] * len(sets)
    flags = _SavedFlags.of(base)
    try:
        for param in base.parameters():
            param.requires_grad_(False)
        for members in groups.values():
            for start in range(0, len(members), chunk):
                block = members[start : start + chunk]
                states = [initial_lora_state(shapes, config.lora_r, seeds[i]) for i in block]
                trained = _train_lockstep(
                    loaded,
                    names,
                    [encoded[i] for i in block],
                    states,
                    [seeds[i] for i in block],
                    block,
                    config,
                )
                for i, state in zip(block, trained, strict=True):
                    results[i] = state
    finally:
        flags.restore(base)
        base.eval()
    return [r for r in results if r is not None]


def _train_lockstep(
    loaded: LoadedModel,
    names: Sequence[str],
    encoded: Sequence[Sequence[EncodedPair]],
    states: Sequence[AdapterState],
    seeds: Sequence[int],
    set_ids: Sequence[int],
    config: TuningConfig,
) -> list[AdapterState]:
    """Train equal-sized sets together; returns their final adapter states (CPU)."""
    model, kind = loaded.model, loaded.kind
    pad_id = loaded.tokenizer.pad_token_id
    schedules = [step_batches(len(e), config, seed) for e, seed in zip(encoded, seeds, strict=True)]
    n_sets = len(encoded)
    with batched_lora(model, names, states, config) as layers:
        params = [p for layer in layers for p in (layer.lora_A, layer.lora_B)]
        optimizer = _optimizer(params, config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_lambda(config, len(schedules[0]))
        )
        torch.manual_seed(config.seed)
        _set_train_mode(model, config)
        for layer in layers:
            layer.dropout.train()
        try:
            for step in range(len(schedules[0])):
                rows = [
                    e[i]
                    for e, schedule in zip(encoded, schedules, strict=True)
                    for i in schedule[step]
                ]
                batch = {k: v.to(loaded.device) for k, v in collate(rows, pad_id, kind).items()}
                logits = forward_logits(model, batch, kind, pad_id)
                per_set = token_losses(logits, batch["labels"], kind).view(n_sets, -1).sum(
                    1
                ) / label_counts(batch["labels"], kind).view(n_sets, -1).sum(1).clamp(min=1)
                for j, value in enumerate(per_set.tolist()):
                    _check_finite(value, step + 1, config, "loss", set_ids[j])
                per_set.sum().backward()
                if config.max_grad_norm is not None:
                    _clip_per_set(params, config.max_grad_norm, step + 1, config, set_ids)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        finally:
            optimizer.zero_grad(set_to_none=True)
            model.eval()
        return [
            {
                key: tensor
                for name, layer in zip(names, layers, strict=True)
                for key, tensor in (
                    (
                        _adapter_key(name, "lora_A"),
                        layer.lora_A[s].detach().to("cpu", torch.float32, copy=True),
                    ),
                    (
                        _adapter_key(name, "lora_B"),
                        layer.lora_B[s].detach().to("cpu", torch.float32, copy=True),
                    ),
                )
            }
            for s in range(n_sets)
        ]


def _clip_per_set(
    params: Sequence[torch.nn.Parameter],
    max_norm: float,
    step: int,
    config: TuningConfig,
    set_ids: Sequence[int],
) -> None:
    """``clip_grad_norm_`` for each set's slice of the stacked parameters separately."""
    grads = [p.grad for p in params if p.grad is not None]
    squares = torch.stack([g.float().pow(2).flatten(1).sum(1) for g in grads]).sum(0)
    norms = squares.sqrt()
    for j, value in enumerate(norms.tolist()):
        _check_finite(value, step, config, "gradient norm", set_ids[j])
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype).view(-1, *([1] * (g.dim() - 1))))


# ---------------------------------------------------------------------------
# Multi-task tuning through Accelerate


def multitask_tune(
    loaded: LoadedModel,
    pairs: Sequence[tuple[str, str]],
    config: TuningConfig,
    *,
    accelerator: Any = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    names: Sequence[str] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> TunedModel:
    """Multi-task instruction tuning with Hugging Face Accelerate; loss on targets only.

    ``accelerator.prepare(model, optimizer, dataloader, scheduler)`` and
    ``accelerator.backward`` make the same code run on one CPU, one GPU, or under
    ``accelerate launch`` with DDP / DeepSpeed / FSDP configs. Without an
    ``accelerator`` one is created on the loaded model's device type. A rich
    progress bar (stderr, main process) shows steps, loss and ETA.
    ``checkpoint_dir`` receives ``final/`` (and ``step-N/`` every ``save_steps``):
    PEFT ``save_pretrained`` adapters for LoRA, safetensors model + tokenizer for
    full fine-tuning. Returns a TunedModel on the unwrapped model; ``unload()``
    restores the base (single-process runs). ``on_step(done, total)`` is called
    after every optimizer step (e.g. a study's own progress bar).
    """
    from accelerate import Accelerator

    encoded = _encode(loaded, pairs, config, names)
    if accelerator is None:
        accelerator = Accelerator(
            cpu=loaded.device.type == "cpu",
            gradient_accumulation_steps=config.gradient_accumulation_steps,
        )
    torch.manual_seed(config.seed)
    tuned = attach_lora(loaded, config) if config.method == "lora" else _prepare_full(loaded)
    try:
        _train_accelerated(
            tuned,
            encoded,
            config,
            accelerator,
            progress,
            Path(checkpoint_dir) if checkpoint_dir is not None else None,
            on_step,
        )
    except BaseException:
        tuned.unload()
        raise
    return tuned


def _train_accelerated(
    tuned: TunedModel,
    encoded: Sequence[EncodedPair],
    config: TuningConfig,
    accelerator: Any,
    progress: bool,
    checkpoint_dir: Path | None,
    on_step: Callable[[int, int], None] | None = None,
) -> None:
    from torch.utils.data import DataLoader

    loaded = tuned.loaded
    pad_id = loaded.tokenizer.pad_token_id
    params = [p for p in tuned.model.parameters() if p.requires_grad]
    optimizer = _optimizer(params, config)
    loader = DataLoader(
        list(encoded),
        batch_size=config.batch_size,
        shuffle=config.shuffle,
        generator=torch.Generator().manual_seed(config.seed * 7919 + _DATA_STREAM),
        collate_fn=partial(collate, pad_id=pad_id, kind=loaded.kind),
    )
    accumulation = accelerator.gradient_accumulation_steps
    local_batches = math.ceil(len(loader) / accelerator.num_processes)
    steps_per_epoch = math.ceil(local_batches / accumulation)
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    # AcceleratedScheduler steps once per process per optimizer step: count in those units.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(config, total * accelerator.num_processes)
    )
    model, optimizer, loader, scheduler = accelerator.prepare(
        tuned.model, optimizer, loader, scheduler
    )
    _set_train_mode(model, config)
    step = 0
    try:
        with _progress_bar(progress and accelerator.is_main_process, total) as advance:
            for epoch in range(config.epochs):
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(epoch)
                for batch in loader:
                    with accelerator.accumulate(model):
                        loss = masked_lm_loss(model, batch, loaded.kind, pad_id)
                        bad = accelerator.reduce(
                            (~torch.isfinite(loss.detach())).float().reshape(1), "sum"
                        )
                        if float(bad.sum()) > 0:
                            raise TuningDivergedError(
                                step + 1,
                                float(loss),
                                what="loss",
                                learning_rate=config.learning_rate,
                            )
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and config.max_grad_norm is not None:
                            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                    if not accelerator.sync_gradients:
                        continue
                    step += 1
                    tuned.losses.append(float(loss.detach()))
                    advance(tuned.losses[-1])
                    if on_step is not None:
                        on_step(step, total)
                    if (
                        checkpoint_dir is not None
                        and config.save_steps
                        and step % config.save_steps == 0
                        and step < total
                    ):
                        _save_checkpoint(accelerator, model, tuned, checkpoint_dir / f"step-{step}")
                    if step >= total:
                        break
                if step >= total:
                    break
        if checkpoint_dir is not None:
            _save_checkpoint(accelerator, model, tuned, checkpoint_dir / "final")
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.eval()
    tuned.model = accelerator.unwrap_model(model)


def _save_checkpoint(accelerator: Any, model: Any, tuned: TunedModel, directory: Path) -> None:
    """Adapters via PEFT ``save_pretrained``; full models as safetensors + tokenizer.

    ``accelerator.get_state_dict`` gathers weights sharded by DeepSpeed ZeRO-3 or
    FSDP; only the main process writes.
    """
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state = accelerator.get_state_dict(model)
    unwrapped.save_pretrained(
        str(directory), state_dict=state, is_main_process=accelerator.is_main_process
    )
    if tuned.method == "full" and accelerator.is_main_process:
        tuned.loaded.tokenizer.save_pretrained(str(directory))
    accelerator.wait_for_everyone()


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[float], None]]:
    """A rich progress bar over optimizer steps (with loss and ETA) on stderr; no-op if disabled."""
    if not enabled:
        yield lambda loss: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]tuning"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("tuning", total=total, loss="-")

        def advance(loss: float) -> None:
            bar.update(task, advance=1, loss=f"{loss:.4f}")

        yield advance
