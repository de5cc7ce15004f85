"""The tuned model and its lifecycle: attach LoRA, swap adapter weights, save, unload.

One loaded model serves both the base and the tuned state. LoRA wraps the
loaded model itself with PEFT (no second copy of the base weights); the
returned :class:`TunedModel` can switch the adapter off
(:meth:`TunedModel.adapter_disabled`) and :meth:`TunedModel.unload` removes the
adapter layers without merging, leaving the base model bit-identical to before.
Full fine-tuning changes the weights in place, so it keeps one CPU copy of the
original state dict and restores it on ``unload()``: the only place a second
copy of the weights exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from peft import (
    LoraConfig,
    PeftModel,
    TaskType,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)

from tunelens.errors import TunelensInputError
from tunelens.models.loading import LoadedModel
from tunelens.models.tuning.config import TuningConfig
from tunelens.models.tuning.targets import (
    FULL_ADAPTED,
    AdapterState,
    describe_targets,
    initial_lora_state,
    is_conv1d,
    module_shapes,
    target_module_names,
)


@dataclass
class SavedFlags:
    """What tuning changes on the base module and unload() puts back."""

    requires_grad: dict[str, bool]
    training: bool

    @classmethod
    def of(cls, model: torch.nn.Module) -> SavedFlags:
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
    adapted: dict[str, Any] | None = field(default=None, repr=False)
    """What was tuned (:func:`describe_targets`'s shape); ``adapted_modules`` lists it."""
    _flags: SavedFlags | None = field(default=None, repr=False)
    _base_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    _unloaded: bool = False

    @property
    def adapted_modules(self) -> list[str]:
        """Module suffixes that got adapters (``["all"]`` for full fine-tuning)."""
        return list((self.adapted or {}).get("modules") or [])

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
    return TaskType.SEQ_2_SEQ_LM if kind == "seq2seq" else TaskType.CAUSAL_LM


def check_plain(loaded: LoadedModel) -> None:
    """Refuse to tune a model that still carries the adapter of an earlier tuning."""
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
    check_plain(loaded)
    base = loaded.model
    adapted = describe_targets(base, config.target_modules)
    targets = list(adapted["modules"])  # type: ignore[call-overload]
    names = target_module_names(base, targets)
    modules = dict(base.named_modules())
    shapes = module_shapes(base, names)  # before PEFT replaces the modules
    flags = SavedFlags.of(base)
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # used as alpha / r
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        fan_in_fan_out=any(is_conv1d(modules[n]) for n in names),
        bias="none",
        task_type=_task_type(loaded.kind),
    )
    # float32 adapters on a half-precision base (PEFT's default, stated): they train in float32.
    peft_model = get_peft_model(base, lora_config, autocast_adapter_dtype=True)
    if loaded.dispatched:
        _materialise_offloaded_adapters(peft_model)
    tuned = TunedModel(
        loaded=loaded, model=peft_model, method="lora", adapted=adapted, _flags=flags
    )
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
    expected = set(get_peft_model_state_dict(peft_model))
    if set(state) != expected:
        missing = sorted(expected - set(state))[:3]
        unexpected = sorted(set(state) - expected)[:3]
        raise ValueError(
            f"adapter state does not fit this model: missing {missing}, unexpected {unexpected}"
        )
    set_peft_model_state_dict(peft_model, state)


def execution_device(module: torch.nn.Module, fallback: torch.device) -> torch.device:
    """Where ``module`` computes: its Accelerate hook's execution device on a dispatched
    model (an offloaded layer's weights sit on ``meta`` between calls), else its weights'."""
    execution = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if execution is not None:
        return torch.device(execution)
    weight = next(module.parameters(recurse=False), None)
    return weight.device if weight is not None and weight.device.type != "meta" else fallback


def _materialise_offloaded_adapters(peft_model: Any) -> None:
    """LoRA weights of an offloaded layer live where the layer computes, not on ``meta``.

    PEFT puts an adapter on its base layer's weight device, which for a layer
    offloaded to CPU or disk by Accelerate is ``meta`` between calls: such
    weights could neither be set nor trained. The adapter is small, so it stays
    in memory on the base layer's execution device (its values are set next).
    """
    for module in peft_model.modules():
        base = getattr(module, "base_layer", None)
        if base is None:
            continue
        device = execution_device(base, torch.device("cpu"))
        for name in ("lora_A", "lora_B"):
            adapters = getattr(module, name, None)
            if adapters is not None and any(p.is_meta for p in adapters.parameters()):
                adapters.to_empty(device=device)


def prepare_full(loaded: LoadedModel) -> TunedModel:
    """Full fine-tuning: keep a CPU copy of the weights for unload(), make all weights trainable."""
    check_plain(loaded)
    model = loaded.model
    if any(p.is_meta for p in model.parameters()):
        raise TunelensInputError(
            "full fine-tuning needs every weight in memory, and this device map offloads "
            "some to disk: tune with LoRA, or give the devices more max_memory",
            where="tuning.method",
        )
    tuned = TunedModel(
        loaded=loaded,
        model=model,
        method="full",
        adapted=dict(FULL_ADAPTED),
        _flags=SavedFlags.of(model),
        _base_state=_cpu_state(model),
    )
    for param in model.parameters():
        param.requires_grad_(True)
    return tuned
