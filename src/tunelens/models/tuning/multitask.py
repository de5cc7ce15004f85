"""Multi-task tuning through Hugging Face Accelerate (one CPU, one GPU, or many GPUs).

Batches are padding-free where the model allows it (:func:`training_collate`):
a multi-task batch mixes tasks of different prompt lengths (37-68 tokens in the
audit's world pairs), so right padding spends about a third of the positions on
pad tokens (28,525 tokens take 39,248 padded positions in batches of 16).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from tunelens.models.batching import (
    EncodedPair,
    collate,
    collate_causal,
    collate_packed,
    masked_lm_loss,
)
from tunelens.models.hidden_states import packable, sliding_window
from tunelens.models.loading import LoadedModel
from tunelens.models.tuning.adapters import TunedModel, attach_lora, prepare_full
from tunelens.models.tuning.config import TuningConfig
from tunelens.models.tuning.loop import (
    DivergenceGuard,
    data_order_generator,
    encode_training_pairs,
    lr_lambda,
    make_optimizer,
    parameter_norm,
    set_train_mode,
    vocabulary_size,
)
from tunelens.models.wrappers import unwrap_model
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
    encoded = encode_training_pairs(loaded, pairs, config, names)
    if accelerator is None:
        accelerator = Accelerator(
            cpu=loaded.device.type == "cpu",
            gradient_accumulation_steps=config.gradient_accumulation_steps,
        )
    torch.manual_seed(config.seed)
    tuned = attach_lora(loaded, config) if config.method == "lora" else prepare_full(loaded)
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


@dataclass
class _Prepared:
    """What ``accelerator.prepare`` made of the run's model, optimizer, loader and schedule."""

    accelerator: Any
    model: Any
    optimizer: Any
    loader: Any
    scheduler: Any


def _train_accelerated(
    tuned: TunedModel,
    encoded: Sequence[EncodedPair],
    config: TuningConfig,
    accelerator: Any,
    progress: bool,
    checkpoint_dir: Path | None,
    on_step: Callable[[int, int], None] | None = None,
) -> None:
    """Train ``tuned`` in place on ``encoded`` through ``accelerator``; checkpoints and
    progress as :func:`multitask_tune` describes."""
    loaded = tuned.loaded
    params = [p for p in tuned.model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config)
    loader = _data_loader(loaded, encoded, config)
    total = _total_steps(len(loader), accelerator, config)
    # AcceleratedScheduler steps once per process per optimizer step: count in those units.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config, total * accelerator.num_processes)
    )
    run = _Prepared(accelerator, *accelerator.prepare(tuned.model, optimizer, loader, scheduler))
    model = run.model
    trainable = [p for p in model.parameters() if p.requires_grad]  # as prepared (FSDP)
    guard = DivergenceGuard(config, vocabulary_size(loaded), total_steps=total)
    guard.param_norm(0, _worst(accelerator, parameter_norm(trainable)))
    set_train_mode(model, config)
    try:
        with ProgressDisplay(progress and accelerator.is_main_process) as display:
            bar = display.add("tuning", total)

            def after_step(step: int, loss: torch.Tensor) -> None:
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

            _run_epochs(run, guard, config, loaded, total, after_step)
        if checkpoint_dir is not None:
            _save_checkpoint(accelerator, model, tuned, checkpoint_dir / "final")
    finally:
        run.optimizer.zero_grad(set_to_none=True)
        model.eval()
    tuned.model = accelerator.unwrap_model(model)


def _data_loader(loaded: LoadedModel, encoded: Sequence[EncodedPair], config: TuningConfig) -> Any:
    """Batches of ``config.batch_size`` pairs in the seeded data order, collated for ``loaded``."""
    dataset: Any = list(encoded)  # a list is a map-style dataset
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=config.shuffle,
        generator=data_order_generator(config.seed),
        collate_fn=training_collate(loaded),
    )


def _total_steps(batches: int, accelerator: Any, config: TuningConfig) -> int:
    """Optimizer steps of the whole run: each process's share of ``batches`` per epoch, in
    groups of the accumulation steps, over the epochs, at most ``max_steps``."""
    local_batches = math.ceil(batches / accelerator.num_processes)
    steps_per_epoch = math.ceil(local_batches / accelerator.gradient_accumulation_steps)
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    return total


def _run_epochs(
    run: _Prepared,
    guard: DivergenceGuard,
    config: TuningConfig,
    loaded: LoadedModel,
    total: int,
    after_step: Callable[[int, torch.Tensor], None],
) -> None:
    """Every epoch's batches until ``total`` optimizer steps; ``after_step(step, loss)`` after
    each optimizer step (not after the micro-batches that only accumulate gradients)."""
    step = 0
    for epoch in range(config.epochs):
        if hasattr(run.loader, "set_epoch"):
            run.loader.set_epoch(epoch)
        for batch in run.loader:
            loss = _micro_step(run, batch, guard, config, loaded, step + 1)
            if not run.accelerator.sync_gradients:
                continue
            step += 1
            after_step(step, loss)
            if step >= total:
                return


def _micro_step(
    run: _Prepared,
    batch: dict[str, Any],
    guard: DivergenceGuard,
    config: TuningConfig,
    loaded: LoadedModel,
    step: int,
) -> torch.Tensor:
    """Forward and backward of one batch; on the batch that completes an accumulation,
    clipping and the optimizer and schedule steps (Accelerate skips them on the others).
    ``step`` is the optimizer step the batch belongs to; returns the batch's loss."""
    accelerator, model = run.accelerator, run.model
    with accelerator.accumulate(model):
        loss = masked_lm_loss(model, batch, loaded.kind, loaded.tokenizer.pad_token_id)
        guard.loss(step, _worst(accelerator, loss.detach()))
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            # Clipping at infinity measures the norm without clipping.
            norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm or math.inf)
            if norm is not None:  # DeepSpeed clips inside its own step
                guard.grad_norm(step, _worst(accelerator, norm))
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    return loss


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
    packed hidden-state capture needs (:func:`tunelens.models.hidden_states.packable`:
    a causal LM with position ids whose attention takes a custom 4-D mask, no
    ALiBi); a sliding-window model packs only batches whose sequences fit its
    window. Same losses either way, up to float rounding.
    """
    pad_id = loaded.tokenizer.pad_token_id
    if not packable(loaded):
        return partial(collate, pad_id=pad_id, kind=loaded.kind)
    window = sliding_window(unwrap_model(loaded.model).config)

    def build(encoded: Sequence[EncodedPair]) -> dict[str, Any]:
        longest = max(len(e.prompt_ids) + len(e.target_ids) for e in encoded)
        if window is not None and longest > window:
            return collate_causal(encoded, pad_id)
        return collate_packed(encoded, pad_id)

    return build
