"""Multi-task tuning through Hugging Face Accelerate (one CPU, one GPU, or many GPUs).

Batches are padding-free where the model allows it (:func:`training_collate`):
a multi-task batch mixes tasks of different prompt lengths (37-68 tokens in the
audit's world pairs), so right padding spends about a third of the positions on
pad tokens (28,525 tokens take 39,248 padded positions in batches of 16).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tunelens.models.batching import (
    EncodedPair,
    collate,
    collate_causal,
    collate_packed,
    masked_lm_loss,
)
from tunelens.models.loading import LoadedModel
from tunelens.models.tuning.adapters import TunedModel, _prepare_full, attach_lora
from tunelens.models.tuning.config import TuningConfig
from tunelens.models.tuning.loop import (
    _DATA_STREAM,
    DivergenceGuard,
    _encode,
    _lr_lambda,
    _optimizer,
    _set_train_mode,
    parameter_norm,
    vocabulary_size,
)
from tunelens.progress import ProgressDisplay


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
    ``accelerator`` one is created on the loaded model's device type. The shared
    :class:`~tunelens.progress.ProgressDisplay` (stderr, main process) shows steps,
    loss and ETA.
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
    dataset: Any = list(encoded)  # a list is a map-style dataset
    loader: Any = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=config.shuffle,
        generator=torch.Generator().manual_seed(config.seed * 7919 + _DATA_STREAM),
        collate_fn=training_collate(loaded),
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
    trainable = [p for p in model.parameters() if p.requires_grad]  # as prepared (FSDP)
    guard = DivergenceGuard(config, vocabulary_size(loaded), total_steps=total)
    guard.param_norm(0, _worst(accelerator, parameter_norm(trainable)))
    _set_train_mode(model, config)
    step = 0
    try:
        with ProgressDisplay(progress and accelerator.is_main_process) as display:
            bar = display.add("tuning", total)
            for epoch in range(config.epochs):
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(epoch)
                for batch in loader:
                    with accelerator.accumulate(model):
                        loss = masked_lm_loss(model, batch, loaded.kind, pad_id)
                        guard.loss(step + 1, _worst(accelerator, loss.detach()))
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:
                            # Clipping at infinity measures the norm without clipping.
                            norm = accelerator.clip_grad_norm_(
                                model.parameters(), config.max_grad_norm or math.inf
                            )
                            if norm is not None:  # DeepSpeed clips inside its own step
                                guard.grad_norm(step + 1, _worst(accelerator, norm))
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                    if not accelerator.sync_gradients:
                        continue
                    step += 1
                    guard.param_norm(step, _worst(accelerator, parameter_norm(trainable)))
                    tuned.losses.append(float(loss.detach()))
                    display.advance(bar, loss=tuned.losses[-1])
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


def _worst(accelerator: Any, value: torch.Tensor | float) -> float:
    """The largest of every process's ``value`` (NaN wins), so all processes stop together."""
    local = torch.as_tensor(value, dtype=torch.float32, device=accelerator.device).reshape(1)
    if accelerator.num_processes == 1:
        return float(local)
    return float(accelerator.gather(local).max())


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


def training_collate(loaded: LoadedModel) -> Callable[[Sequence[EncodedPair]], dict[str, Any]]:
    """The batch builder for ``loaded``: packed (padding-free) where it computes packed rows
    exactly, else padded.

    Packed rows (:func:`~tunelens.models.batching.collate_packed`) need what the
    packed hidden-state capture needs (:func:`tunelens.models.hidden_states._packable`:
    a causal LM with position ids whose attention takes a custom 4-D mask, no
    ALiBi); a sliding-window model packs only batches whose sequences fit its
    window. Same losses either way, up to float rounding.
    """
    from tunelens.models.hidden_states import _base_model, _packable, _sliding_window

    pad_id = loaded.tokenizer.pad_token_id
    if not _packable(loaded):
        return partial(collate, pad_id=pad_id, kind=loaded.kind)
    window = _sliding_window(_base_model(loaded.model).config)

    def build(encoded: Sequence[EncodedPair]) -> dict[str, Any]:
        longest = max(len(e.prompt_ids) + len(e.target_ids) for e in encoded)
        if window is not None and longest > window:
            return collate_causal(encoded, pad_id)
        return collate_packed(encoded, pad_id)

    return build
