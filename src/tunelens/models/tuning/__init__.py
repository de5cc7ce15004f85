"""Instruction tuning: LoRA or full fine-tuning on (prompt, target) pairs, loss on targets only.

One configuration, :class:`TuningConfig` (:mod:`.config`, also the spec's
``TuningSpec``), and three entry points, one per way the experiments tune:

* :func:`tune_on_pairs` (:mod:`.per_set`) fine-tunes the loaded model on one
  small set (the k demonstrations of a convergence cell) with a plain, seeded loop.
* :func:`tune_many_sets` (:mod:`.many_sets`) runs many such fine-tunes at
  once: one LoRA adapter per set, all sets stacked along the batch dimension in
  one forward/backward (a batched LoRA module with per-set A/B matrices applied
  by ``torch.bmm``). For causal LMs each set's shared prompt prefix (the task
  definition) is computed once per step, in packed rows under a 4-D mask or
  through its repeated key/value cache (:func:`choose_layout`). Its adapters
  equal those of sequential :func:`tune_on_pairs` runs with the same seeds and
  settings (up to float rounding). :func:`tune_set` is ``tune_on_pairs`` for
  one set on that path (decide's tuned methods).
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
    from tunelens.models.tuning.loop import (
        TuningDivergedError,
        step_batches,
    )
    from tunelens.models.tuning.many_sets import (
        BatchedLoraLinear,
        batched_lora,
        choose_layout,
        shared_prefix_length,
        tune_many_sets,
        tune_set,
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
    "choose_layout",
    "initial_lora_state",
    "load_adapter_state",
    "multitask_tune",
    "resolve_target_modules",
    "shared_prefix_length",
    "step_batches",
    "target_module_names",
    "tune_many_sets",
    "tune_on_pairs",
    "tune_set",
]

# name -> submodule (the public names only).
_LAZY = {
    "TunedModel": "adapters",
    "attach_lora": "adapters",
    "load_adapter_state": "adapters",
    "BatchedLoraLinear": "many_sets",
    "batched_lora": "many_sets",
    "choose_layout": "many_sets",
    "shared_prefix_length": "many_sets",
    "tune_many_sets": "many_sets",
    "tune_set": "many_sets",
    "TuningDivergedError": "loop",
    "step_batches": "loop",
    "multitask_tune": "multitask",
    "tune_on_pairs": "per_set",
    "FALLBACK_TARGET_MODULES": "targets",
    "AdapterState": "targets",
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
