"""Instruction tuning: LoRA or full fine-tuning on (prompt, target) pairs, loss on targets only.

One configuration, :class:`TuningConfig` (:mod:`.config`, also the spec's
``TuningSpec``), and three entry points, one per way the experiments tune:

* :func:`tune_on_pairs` (:mod:`.per_set`) fine-tunes the loaded model on one
  small set (the k demonstrations of a convergence cell) with a plain, seeded loop.
* :func:`tune_many_sets` (:mod:`.many_sets`) runs many such fine-tunes at
  once: one LoRA adapter per set, all sets stacked along the batch dimension in
  one forward/backward (a batched LoRA module with per-set A/B matrices applied
  by ``torch.bmm``). Its adapters equal those of sequential :func:`tune_on_pairs`
  runs with the same seeds and settings (up to float rounding).
* :func:`multitask_tune` (:mod:`.multitask`) tunes on a large multi-task mixture
  through Hugging Face Accelerate, so ``accelerate launch`` with DeepSpeed / FSDP
  configs spreads it over many GPUs without code changes.

The adapter lifecycle (:func:`attach_lora`, :class:`TunedModel` with
``adapter_disabled`` / ``load_adapter_state`` / ``save`` / ``unload``) lives in
:mod:`.adapters`; target modules and seeded LoRA initial weights in
:mod:`.targets`; what every loop shares (step schedule, optimizer, divergence
checks) in :mod:`.loop`.

Determinism: a seed fixes the LoRA initialisation (drawn from a seeded
generator, identical for sequential and batched tuning), the data order (a
seeded permutation per epoch) and ``torch.manual_seed`` for anything else.
The model's own dropout is off while tuning unless ``model_dropout`` is set,
so results do not depend on how examples are batched.

Importing this package (or :mod:`.config`) does not import torch; the
torch-backed names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tunelens.models.tuning.config import DEFAULT_TARGET_MODULES, StudyTuning, TuningConfig

if TYPE_CHECKING:
    from tunelens.models.tuning.adapters import (
        TunedModel,
        attach_lora,
        load_adapter_state,
    )
    from tunelens.models.tuning.adapters import (
        _check_plain as _check_plain,
    )
    from tunelens.models.tuning.adapters import (
        _cpu_state as _cpu_state,
    )
    from tunelens.models.tuning.adapters import (
        _prepare_full as _prepare_full,
    )
    from tunelens.models.tuning.adapters import (
        _SavedFlags as _SavedFlags,
    )
    from tunelens.models.tuning.loop import (
        TuningDivergedError,
        step_batches,
    )
    from tunelens.models.tuning.loop import (
        _check_finite as _check_finite,
    )
    from tunelens.models.tuning.loop import (
        _encode as _encode,
    )
    from tunelens.models.tuning.loop import (
        _lr_lambda as _lr_lambda,
    )
    from tunelens.models.tuning.loop import (
        _optimizer as _optimizer,
    )
    from tunelens.models.tuning.loop import (
        _set_train_mode as _set_train_mode,
    )
    from tunelens.models.tuning.many_sets import (
        BatchedLoraLinear,
        batched_lora,
        tune_many_sets,
    )
    from tunelens.models.tuning.many_sets import (
        _clip_per_set as _clip_per_set,
    )
    from tunelens.models.tuning.many_sets import (
        _train_lockstep as _train_lockstep,
    )
    from tunelens.models.tuning.multitask import multitask_tune
    from tunelens.models.tuning.per_set import tune_on_pairs
    from tunelens.models.tuning.targets import (
        FALLBACK_TARGET_MODULES,
        AdapterState,
        initial_lora_state,
        resolve_target_modules,
        target_module_names,
    )
    from tunelens.models.tuning.targets import (
        _adapter_dtype as _adapter_dtype,
    )
    from tunelens.models.tuning.targets import (
        _adapter_key as _adapter_key,
    )
    from tunelens.models.tuning.targets import (
        _module_shapes as _module_shapes,
    )

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "FALLBACK_TARGET_MODULES",
    "AdapterState",
    "BatchedLoraLinear",
    "StudyTuning",
    "TunedModel",
    "TuningConfig",
    "TuningDivergedError",
    "attach_lora",
    "batched_lora",
    "initial_lora_state",
    "load_adapter_state",
    "multitask_tune",
    "resolve_target_modules",
    "step_batches",
    "target_module_names",
    "tune_many_sets",
    "tune_on_pairs",
]

# name -> submodule; the private helpers are listed for bench/prototypes.py, which
# builds its prototype from the library's own pieces.
_LAZY = {
    "TunedModel": "adapters",
    "_SavedFlags": "adapters",
    "_check_plain": "adapters",
    "_cpu_state": "adapters",
    "_prepare_full": "adapters",
    "attach_lora": "adapters",
    "load_adapter_state": "adapters",
    "BatchedLoraLinear": "many_sets",
    "_clip_per_set": "many_sets",
    "_train_lockstep": "many_sets",
    "batched_lora": "many_sets",
    "tune_many_sets": "many_sets",
    "TuningDivergedError": "loop",
    "_check_finite": "loop",
    "_encode": "loop",
    "_lr_lambda": "loop",
    "_optimizer": "loop",
    "_set_train_mode": "loop",
    "step_batches": "loop",
    "multitask_tune": "multitask",
    "tune_on_pairs": "per_set",
    "FALLBACK_TARGET_MODULES": "targets",
    "AdapterState": "targets",
    "_adapter_dtype": "targets",
    "_adapter_key": "targets",
    "_module_shapes": "targets",
    "initial_lora_state": "targets",
    "resolve_target_modules": "targets",
    "target_module_names": "targets",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups (and monkeypatch.setattr) see a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
