"""Which modules get adapters, and the seeded LoRA starting weights.

Shared by sequential (:mod:`.per_set`), batched (:mod:`.batched_lora`) and
multi-task (:mod:`.multitask`) tuning, so that every path starts from the same
adapters for the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers.pytorch_utils import Conv1D

from tunelens.errors import TunelensInputError
from tunelens.models.tuning.config import DEFAULT_TARGET_MODULES

AdapterState = dict[str, torch.Tensor]

# Attention projections per architecture where the q_proj / v_proj default names nothing,
# consulted after peft's own table (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
FALLBACK_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn",),
    "phi3": ("qkv_proj",),  # fused q/k/v; not in peft 0.21's table
    "t5": ("q", "v"),
    "mt5": ("q", "v"),
    "umt5": ("q", "v"),
    "gpt_neox": ("query_key_value",),
    "bloom": ("query_key_value",),
    "falcon": ("query_key_value",),
}

# Separate seeded streams: LoRA initial weights, and the order of the training data.
_INIT_STREAM = 0


def _adaptable(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear | Conv1D)


def is_conv1d(module: torch.nn.Module) -> bool:
    """GPT-2's ``Conv1D``: a linear layer that stores its weight as [in, out]."""
    return isinstance(module, Conv1D)


def target_module_names(model: torch.nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the Linear / Conv1D modules matched by ``targets`` (PEFT's suffix rule)."""
    return [
        name
        for name, module in model.named_modules()
        if _adaptable(module) and any(name == t or name.endswith(f".{t}") for t in targets)
    ]


ALL_LINEAR = "all-linear"
"""``target_modules: [all-linear]``: every linear layer of the blocks, the output head excepted."""


def _all_linear_suffixes(model: torch.nn.Module) -> list[str]:
    """Name suffixes of every Linear / Conv1D except the output head (PEFT's all-linear)."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    suffixes: list[str] = []
    head_names = set()
    for name, module in model.named_modules():
        if not _adaptable(module):
            continue
        suffix = name.rsplit(".", 1)[-1]
        if module is head:
            head_names.add(suffix)
        elif suffix not in suffixes:
            suffixes.append(suffix)
    return [s for s in suffixes if s not in head_names]


def resolve_target_modules(model: torch.nn.Module, requested: Sequence[str]) -> list[str]:
    """``requested`` if it names modules of ``model``, else the architecture's default.

    ``["all-linear"]`` names every linear layer but the output head. Defaults
    apply only to the configured default (q_proj, v_proj): PEFT's per-architecture
    table (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``), then tunelens's
    own (:data:`FALLBACK_TARGET_MODULES`, for architectures PEFT lacks: Phi-3). A user's own list
    that matches nothing is an input error listing what the model has.
    """
    return _resolve(model, requested)[0]


def _resolve(model: torch.nn.Module, requested: Sequence[str]) -> tuple[list[str], str]:
    """(target suffixes, where they came from) for :func:`resolve_target_modules`."""
    if list(requested) == [ALL_LINEAR]:
        return _all_linear_suffixes(model), "all-linear"
    if target_module_names(model, requested):
        return list(requested), "requested"
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if tuple(requested) == DEFAULT_TARGET_MODULES:
        for source, candidate in (
            ("peft", TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)),
            ("tunelens", FALLBACK_TARGET_MODULES.get(model_type)),
        ):
            # peft gives a regular expression for a few multimodal models: not a suffix list
            if isinstance(candidate, list | tuple) and target_module_names(model, candidate):
                return list(candidate), f"{source} default for {model_type}"
    suffixes = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _adaptable(m)})
    raise TunelensInputError(
        f"no module of this {model_type or 'model'} matches target_modules {list(requested)}; "
        f"its linear layers end in: {', '.join(suffixes[:16])}",
        where="tuning.target_modules",
    )


# What a module suffix adapts, in words (fused projections name every weight they hold).
_TARGET_WEIGHTS: dict[str, str] = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "attention output",
    "q": "q",
    "k": "k",
    "v": "v",
    "o": "attention output",
    "c_attn": "q, k, v together (GPT-2's fused c_attn)",
    "query_key_value": "q, k, v together (fused query_key_value)",
    "qkv_proj": "q, k, v together (fused qkv_proj)",
    "Wqkv": "q, k, v together (fused Wqkv)",
    "c_proj": "output projections (GPT-2 c_proj: attention and MLP)",
    "c_fc": "MLP input (c_fc)",
    "gate_proj": "MLP gate",
    "up_proj": "MLP up",
    "down_proj": "MLP down",
    "gate_up_proj": "MLP gate and up together (fused gate_up_proj)",
    "dense": "attention output (dense)",
}


def describe_targets(model: torch.nn.Module, requested: Sequence[str]) -> dict[str, object]:
    """What LoRA adapts on ``model`` for ``requested``: resolved suffixes, weights in words, count.

    ``modules``: the suffixes adapted; ``source``: ``requested``, ``all-linear``
    or the default table they came from (``peft default for bart``); ``weights``:
    what they hold, in words. On GPT-2 the default q/v request resolves to the
    fused ``c_attn``, so the weights read "q, k, v together": LoRA there adapts
    all three, not q and v (Phi-3's ``qkv_proj`` likewise).
    """
    targets, source = _resolve(model, requested)
    return {
        "requested": list(requested),
        "modules": targets,
        "source": source,
        "weights": [_TARGET_WEIGHTS.get(t, t) for t in targets],
        "n_modules": len(target_module_names(model, targets)),
    }


FULL_ADAPTED: dict[str, object] = {
    "requested": [],
    "modules": ["all"],
    "source": "full fine-tuning",
    "weights": ["every weight"],
    "n_modules": None,
}
""":func:`describe_targets`'s shape for full fine-tuning."""


def module_shapes(model: torch.nn.Module, names: Sequence[str]) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of each target; Conv1D stores its weight as [in, out]."""
    modules = dict(model.named_modules())
    shapes = []
    for name in names:
        weight = modules[name].weight
        fan_in, fan_out = (
            (weight.shape[0], weight.shape[1])
            if is_conv1d(modules[name])
            else (weight.shape[1], weight.shape[0])
        )
        shapes.append((name, int(fan_in), int(fan_out)))
    return shapes


def adapter_key(module_name: str, matrix: str) -> str:
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
        state[adapter_key(name, "lora_A")] = a
        state[adapter_key(name, "lora_B")] = torch.zeros(fan_out, r)
    return state


def adapter_dtype(model: torch.nn.Module) -> torch.dtype:
    """float32 adapters on half-precision bases (as PEFT's autocast_adapter_dtype does)."""
    dtype = next(model.parameters()).dtype
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
