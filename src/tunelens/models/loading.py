"""Loading a model and its tokenizer: the embedded world model or any local HF directory.

tunelens never downloads: every load is ``local_files_only=True``, weights come
from safetensors only (a pickle checkpoint can run code), and
``trust_remote_code`` stays off unless the user turns it on. Every way a model
directory can be unusable becomes a :class:`~tunelens.errors.TunelensInputError`
that names the directory, so the CLI exits with status 2 and one clear line.

Padding: the tokenizer of a causal LM is set to pad on the **left**, because
batched generation needs the prompts to end at the same position;
:mod:`tunelens.models.hidden_states` finds the last real token from the
attention mask and passes matching position ids, so it is right with either
side. Encoder-decoders pad on the right (the encoder sees the whole prompt at
once and the decoder starts from its own start token). A tokenizer without a
pad token gets its end-of-sequence token as pad; the attention mask, never the
token id, tells padding from text, so a real end-of-sequence token in a prompt
is not mistaken for padding.
"""

from __future__ import annotations

import importlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate.utils import convert_file_size_to_int
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING,
)
from transformers.utils import logging as hf_logging

from tunelens.errors import TunelensInputError
from tunelens.models.checks import check_loaded
from tunelens.models.paths import is_world_model, resolve_model_path
from tunelens.models.wrappers import unwrap_model

ModelKind = Literal["causal", "seq2seq"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


# Files of which at least one must be present for AutoTokenizer to have something to load.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "spiece.model",
    "vocab.txt",
)


@dataclass
class LoadedModel:
    """A model in eval mode, its (pad-ready) tokenizer, its kind and a display name."""

    model: Any  # a transformers PreTrainedModel (or a PEFT wrapper of one)
    tokenizer: Any  # a transformers tokenizer with a pad token
    kind: ModelKind
    name: str
    offload: Any = None  # a dispatched model's temporary offload folder, kept while loaded

    @property
    def dispatched(self) -> bool:
        """Spread over devices by Accelerate's big-model dispatch (``device_map``)."""
        return is_dispatched(self.model)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embeddings' device (their execution device when
        dispatched: an offloaded layer's weights sit on ``meta`` until it runs)."""
        get_embeddings = getattr(self.model, "get_input_embeddings", None)
        embeddings = get_embeddings() if callable(get_embeddings) else None
        execution = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
        if execution is not None:
            return torch.device(execution)
        weight = getattr(embeddings, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
            return weight.device
        return next(self.model.parameters()).device


def is_dispatched(model: Any) -> bool:
    """True for a model loaded with a ``device_map`` (never ``.to()`` one: Accelerate's hooks
    move each layer's inputs and offloaded weights)."""
    return bool(getattr(unwrap_model(model), "hf_device_map", None))


def parse_dtype(dtype: str) -> torch.dtype:
    """The torch dtype for a dtype name, or a TunelensInputError listing the valid ones."""
    if dtype not in DTYPES:
        raise TunelensInputError(
            f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}", where="dtype"
        )
    return DTYPES[dtype]


def parse_device(device: str) -> torch.device:
    """A torch device that exists on this machine, or a TunelensInputError."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise TunelensInputError(f"unknown device {device!r}: {error}", where="device") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise TunelensInputError(
            f"device {device!r} requested but CUDA is not available", where="device"
        )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise TunelensInputError(
            f"device {device!r} requested but MPS is not available", where="device"
        )
    return parsed


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_device_map(device_map: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """``auto`` (or another Accelerate strategy), a JSON object of module -> device, or None."""
    if device_map is None or isinstance(device_map, dict):
        return device_map
    text = device_map.strip()
    if text in ("", "none"):
        return None
    if text in DEVICE_MAPS:
        return text
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise TunelensInputError(
            f"device map {device_map!r} is neither one of {', '.join(DEVICE_MAPS)} nor a JSON "
            'object of module -> device (e.g. {"model.layers.0": 0, "lm_head": "cpu"})',
            where="device_map",
        )
    return parsed


def parse_max_memory(max_memory: str | dict[Any, Any] | None) -> dict[int | str, int] | None:
    """``0=1GiB,cpu=2GiB`` or a JSON object: device -> bytes (Accelerate's size strings).

    Keys are GPU indices, ``cpu``, ``mps`` or ``disk``; values sizes such as ``500MB``,
    ``1GiB`` or a number of bytes.
    """
    if max_memory is None:
        return None
    pairs: dict[Any, Any]
    if isinstance(max_memory, dict):
        pairs = max_memory
    elif max_memory.strip().startswith("{"):
        try:
            pairs = json.loads(max_memory)
        except json.JSONDecodeError as error:
            raise TunelensInputError(f"not valid JSON: {error}", where="max_memory") from None
    else:
        pairs = {}
        for piece in filter(None, (p.strip() for p in max_memory.split(","))):
            key, sep, value = piece.partition("=")
            if not sep:
                raise TunelensInputError(
                    f"{piece!r} is not DEVICE=SIZE (e.g. 0=1GiB,cpu=2GiB)", where="max_memory"
                )
            pairs[key.strip()] = value.strip()
    parsed: dict[int | str, int] = {}
    for key, value in pairs.items():
        name = str(key).strip()
        device: int | str = int(name) if name.isdigit() else name
        if isinstance(device, str) and device not in ("cpu", "mps", "disk"):
            raise TunelensInputError(
                f"unknown device {name!r} (GPU indices, cpu, mps or disk)", where="max_memory"
            )
        try:
            text = str(value).strip()
            parsed[device] = int(text) if text.isdigit() else convert_file_size_to_int(text)
        except ValueError:
            raise TunelensInputError(
                f"cannot read {value!r} as a size (e.g. 500MB, 2GiB)", where="max_memory"
            ) from None
    return parsed or None


def _one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (the CLI prints one line), shortened."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind_of(config: Any) -> ModelKind:
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def _check_architecture(
    config: Any, kind: ModelKind, directory: Path, trust_remote_code: bool
) -> None:
    """Refuse configs that no causal-LM / seq2seq-LM class can load, before reading weights."""
    mapping = (
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING if kind == "seq2seq" else MODEL_FOR_CAUSAL_LM_MAPPING
    )
    auto_class = "AutoModelForSeq2SeqLM" if kind == "seq2seq" else "AutoModelForCausalLM"
    if type(config) in mapping:
        return
    if trust_remote_code and auto_class in (getattr(config, "auto_map", None) or {}):
        return
    model_type = getattr(config, "model_type", "?")
    raise TunelensInputError(
        f"unsupported architecture: model_type {model_type!r} is neither a causal LM nor an "
        "encoder-decoder LM that transformers can load",
        source=str(directory / "config.json"),
    )


def _check_weights(directory: Path) -> None:
    """Safetensors only: a directory with just pickle weights is refused with a clear line."""
    if any(directory.glob("*.safetensors")) or any(directory.glob("*.safetensors.index.json")):
        return
    pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(
        p.name for p in directory.glob("*.pt")
    )
    found = f" (found {', '.join(pickles[:3])}; convert them to safetensors)" if pickles else ""
    raise TunelensInputError(
        f"no .safetensors weights; tunelens loads safetensors only{found}", source=str(directory)
    )


def _quiet_transformers() -> None:
    """No "Loading weights" progress bar: it would turn a one-line error into several."""
    hf_logging.disable_progress_bar()


def _check_safetensors_headers(directory: Path) -> None:
    """Every weights file must be a readable safetensors file (a truncated one is exit 2)."""
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = list(handle.keys())
                if keys:  # reading the last tensor proves the file is not cut short
                    handle.get_slice(keys[-1])
            size = path.stat().st_size
        except Exception as error:  # noqa: BLE001 - SafetensorError is a plain Exception
            raise TunelensInputError(
                f"corrupt or truncated safetensors file: {_one_line(error)}", source=str(path)
            ) from None
        if size < 8:
            raise TunelensInputError("corrupt safetensors file: too short", source=str(path))


def _first_shape_mismatch(directory: Path, config: Any, auto: Any) -> str | None:
    """``"tensor 'x' has shape [a] in the weights, [b] in the model"`` for the first such tensor."""
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in auto.from_config(config).state_dict().items()}
        for path in sorted(directory.glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as handle:
                for key in sorted(handle.keys()):
                    shape = tuple(handle.get_slice(key).get_shape())
                    want = expected.get(key)
                    if want is not None and want != shape:
                        return (
                            f"tensor {key!r} has shape {list(shape)} in the weights but "
                            f"{list(want)} in the model config.json describes"
                        )
    except Exception:  # noqa: BLE001 - a better message is optional; the error stands
        return None
    return None


# What a SentencePiece tokenizer without tokenizer.json needs: (package to install, module).
SENTENCEPIECE_PACKAGES = (("sentencepiece", "sentencepiece"), ("protobuf", "google.protobuf"))


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _tokenizer_failure(directory: Path, error: BaseException) -> str:
    """Why the tokenizer did not load, naming the packages to install where some are missing.

    A directory whose tokenizer is only a SentencePiece model (``tokenizer.model`` /
    ``spiece.model``, no ``tokenizer.json``) is converted by transformers with
    ``sentencepiece`` (and ``protobuf``); without them transformers falls back to
    its tiktoken reader and blames tiktoken, which is the wrong package.
    """
    pieces = [f for f in ("tokenizer.model", "spiece.model") if (directory / f).is_file()]
    if pieces and not (directory / "tokenizer.json").is_file():
        missing = [name for name, module in SENTENCEPIECE_PACKAGES if not _importable(module)]
        if missing:
            return (
                f"{pieces[0]} is a SentencePiece model, which needs {' and '.join(missing)}: "
                f"pip install {' '.join(missing)}"
            )
    return _one_line(error)


def _first(names: Any) -> str:
    return sorted(str(n if isinstance(n, str) else n[0]) for n in names)[0]


def check_loading_info(info: dict[str, Any], source: str) -> None:
    """Refuse a load that left weights missing, unexpected or mis-shaped: no random init, ever.

    transformers fills missing weights with random values and only warns; a
    study would then measure noise and call it the model.
    """
    missing = info.get("missing_keys") or ()
    unexpected = info.get("unexpected_keys") or ()
    mismatched = info.get("mismatched_keys") or ()
    errors = info.get("error_msgs") or ()
    if missing:
        raise TunelensInputError(
            f"{len(missing)} weight tensor(s) the config needs are missing from the weights, "
            f"first {_first(missing)!r}; tunelens never initialises weights randomly (does "
            "config.json describe these weights?)",
            source=source,
        )
    if mismatched:
        raise TunelensInputError(
            f"{len(mismatched)} weight tensor(s) have another shape than the config says, "
            f"first {_first(mismatched)!r}",
            source=source,
        )
    if unexpected:
        raise TunelensInputError(
            f"{len(unexpected)} weight tensor(s) are not part of the model the config "
            f"describes, first {_first(unexpected)!r} (does config.json describe these "
            "weights?)",
            source=source,
        )
    if errors:
        raise TunelensInputError(f"cannot load the weights: {_one_line(errors[0])}", source=source)


def check_vocabulary(model: Any, tokenizer: Any, source: str) -> None:
    """A tokenizer whose ids run past the embedding table would index out of range."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:
        raise TunelensInputError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding table only "
            f"{rows} rows (vocab_size in config.json does not fit the tokenizer)",
            source=source,
        )


def prepare_tokenizer(tokenizer: Any, kind: ModelKind, source: str) -> Any:
    """Give the tokenizer a pad token and the padding side that suits ``kind`` (in place).

    Causal: left padding (what batched generation needs; hidden-state capture
    handles either side). Seq2seq: right padding.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TunelensInputError(
                "tokenizer has neither a pad token nor an end-of-sequence token to pad with",
                source=source,
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left" if kind == "causal" else "right"
    return tokenizer


def _sync_pad_id(model: Any, tokenizer: Any) -> None:
    """Let generation know the pad id when the model's own configs leave it unset."""
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id


def load_model(
    name_or_path: str,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[Any, Any] | None = None,
    offload_folder: str | Path | None = None,
) -> LoadedModel:
    """Load ``"world"`` or a local HF causal-LM / encoder-decoder directory, in eval mode.

    ``config.is_encoder_decoder`` decides between AutoModelForSeq2SeqLM and
    AutoModelForCausalLM. Raises TunelensInputError for a missing or unusable
    directory, an unsupported architecture, missing safetensors weights, a
    tokenizer that cannot pad, or an unknown dtype or device.

    A model bigger than one device: ``device_map`` (``"auto"``, ...) loads through
    Accelerate's big-model dispatch, layers spread over the GPUs, the CPU and (past
    ``max_memory``) disk, in ``offload_folder`` or a temporary folder kept while the
    model is loaded; ``device`` is then not used for placement.
    """
    torch_dtype = parse_dtype(dtype)
    torch_device = parse_device(device)
    placement, offload = _placement(device_map, max_memory, offload_folder)
    directory = resolve_model_path(name_or_path)
    source = str(directory)
    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    config = _read_config(directory, common)
    kind = _kind_of(config)
    _check_architecture(config, kind, directory, trust_remote_code)
    _check_weights(directory)
    tokenizer = _load_tokenizer(directory, kind, common)
    model = _load_weights(directory, config, kind, torch_dtype, placement, common)
    check_vocabulary(model, tokenizer, source)
    check_loaded(model, tokenizer, source)  # token ids, chat template (models.checks)
    if not is_dispatched(model):  # a dispatched model stays where Accelerate put it
        model.to(torch_device)  # type: ignore[arg-type,unused-ignore]  # transformers types .to()
    model.eval()
    _sync_pad_id(model, tokenizer)
    name = name_or_path if is_world_model(name_or_path) else str(directory)
    return LoadedModel(model=model, tokenizer=tokenizer, kind=kind, name=name, offload=offload)


def _read_config(directory: Path, common: dict[str, Any]) -> Any:
    """The directory's transformers config; an unreadable one is an input error naming it."""
    try:
        return AutoConfig.from_pretrained(directory, **common)
    except json.JSONDecodeError as error:
        raise TunelensInputError(
            f"config.json is not valid JSON: {error}", source=str(directory / "config.json")
        ) from None
    except (OSError, ValueError, KeyError) as error:
        raise TunelensInputError(
            f"unsupported architecture or unreadable config: {_one_line(error)}",
            source=str(directory / "config.json"),
        ) from None


def _load_tokenizer(directory: Path, kind: ModelKind, common: dict[str, Any]) -> Any:
    """The directory's tokenizer, ready to pad for ``kind`` (:func:`prepare_tokenizer`)."""
    source = str(directory)
    if not any((directory / f).is_file() for f in TOKENIZER_FILES):
        raise TunelensInputError(
            f"no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})", source=source
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, **common)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as error:
        raise TunelensInputError(
            f"cannot load the tokenizer: {_tokenizer_failure(directory, error)}", source=source
        ) from None
    return prepare_tokenizer(tokenizer, kind, source)


def _load_weights(
    directory: Path,
    config: Any,
    kind: ModelKind,
    torch_dtype: torch.dtype,
    placement: dict[str, Any],
    common: dict[str, Any],
) -> Any:
    """The model with its safetensors weights, every one of them found (no random init);
    each way the weights can be unusable is an input error naming the directory."""
    source = str(directory)
    _check_safetensors_headers(directory)
    auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    _quiet_transformers()
    try:
        model, info = auto.from_pretrained(  # type: ignore[misc]  # a pair with loading info
            directory,
            config=config,
            dtype=torch_dtype,
            use_safetensors=True,
            output_loading_info=True,
            **placement,
            **common,
        )
    except RuntimeError as error:
        # transformers refuses weights whose shapes differ from the config's (and says
        # which only in a printed report): name the first such tensor ourselves.
        mismatch = _first_shape_mismatch(directory, config, auto)
        detail = mismatch or _one_line(error)
        raise TunelensInputError(
            f"cannot load the model weights: {detail}", source=source
        ) from None
    except (OSError, ValueError) as error:
        raise TunelensInputError(
            f"cannot load the model weights: {_one_line(error)}", source=source
        ) from None
    except Exception as error:  # noqa: BLE001 - safetensors' own error type is not an OSError
        if type(error).__name__ != "SafetensorError":
            raise
        raise TunelensInputError(
            f"corrupt safetensors weights: {_one_line(error)}", source=source
        ) from None
    check_loading_info(info, source)
    return model


def _placement(
    device_map: str | dict[str, Any] | None,
    max_memory: str | dict[Any, Any] | None,
    offload_folder: str | Path | None,
) -> tuple[dict[str, Any], Any]:
    """``from_pretrained``'s big-model keywords (none without a device map), and the
    temporary offload folder to keep alive while the model is loaded (or None)."""
    chosen = parse_device_map(device_map)
    memory = parse_max_memory(max_memory)
    if chosen is None:
        if memory is not None:
            raise TunelensInputError(
                "max_memory needs a device map (e.g. --device-map auto)", where="max_memory"
            )
        return {}, None
    keep = None
    if offload_folder is None:
        keep = tempfile.TemporaryDirectory(prefix="tunelens-offload-")
        offload_folder = keep.name
    keywords = {"device_map": chosen, "max_memory": memory, "offload_folder": str(offload_folder)}
    return keywords, keep


def load_model_from_objects(
    model: Any, tokenizer: Any, *, name: str = "in-memory", kind: ModelKind | None = None
) -> LoadedModel:
    """Wrap an in-memory model and tokenizer (tests, tiny in-code models) like ``load_model``.

    The kind comes from ``config.is_encoder_decoder`` unless given; the tokenizer
    gets the same pad token and padding side as in ``load_model``.
    """
    kind = kind or _kind_of(model.config)
    prepare_tokenizer(tokenizer, kind, name)
    model.eval()
    _sync_pad_id(model, tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, kind=kind, name=name)
