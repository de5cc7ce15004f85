"""One small fine-tune: the loaded model tuned on one set of (prompt, target) pairs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tunelens.models.batching import EncodedPair, collate, masked_lm_loss
from tunelens.models.loading import LoadedModel
from tunelens.models.tuning.adapters import TunedModel, attach_lora, prepare_full
from tunelens.models.tuning.config import TuningConfig
from tunelens.models.tuning.loop import (
    DivergenceGuard,
    encode_training_pairs,
    lr_lambda,
    make_optimizer,
    parameter_norm,
    set_train_mode,
    step_batches,
    vocabulary_size,
)


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
    context and TuningDivergedError when the run destroys the model (non-finite or
    exploding loss, gradient norm or parameter norm: :class:`DivergenceGuard`).
    """
    encoded = encode_training_pairs(loaded, pairs, config, names)
    tuned = attach_lora(loaded, config) if config.method == "lora" else prepare_full(loaded)
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
    optimizer = make_optimizer(params, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, len(schedule)))
    guard = DivergenceGuard(config, vocabulary_size(loaded), total_steps=len(schedule))
    guard.param_norm(0, parameter_norm(params))
    torch.manual_seed(config.seed)
    set_train_mode(model, config)
    try:
        for step, indices in enumerate(schedule, start=1):
            batch = {
                k: v.to(loaded.device)
                for k, v in collate([encoded[i] for i in indices], pad_id, loaded.kind).items()
            }
            loss = masked_lm_loss(model, batch, loaded.kind, pad_id)
            guard.loss(step, float(loss.detach()))
            loss.backward()
            # Clipping at infinity measures the norm without clipping.
            norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or math.inf)
            guard.grad_norm(step, float(norm))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tuned.losses.append(float(loss.detach()))
            guard.param_norm(step, parameter_norm(params))
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.eval()
