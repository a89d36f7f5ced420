"""Safe intake of trained weights: safetensors, or torch checkpoints read with weights_only=True.

Users upload weight files, so a file is treated as hostile until proven otherwise: nothing is
ever unpickled with arbitrary globals (no ``weights_only=False`` fallback, no ``pickle.load``),
and sizes are checked against :class:`WeightLimits` from headers *before* any tensor is
allocated, so a lying or truncated file fails with a clear error instead of a crash or a huge
allocation.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from autoprune.errors import ModelIntakeError, UnsafeInputError

GiB = 1 << 30
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
ACCEPTED_SUFFIXES = (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES)
REFUSED_SUFFIXES = {
    ".pt2": "a torch.export program",
    ".ts": "a TorchScript archive",
    ".jit": "a TorchScript archive",
    ".pkl": "a raw pickle",
    ".pickle": "a raw pickle",
    ".onnx": "an ONNX graph",
}
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
SAVE_HINT = "save weights with torch.save(model.state_dict(), path) or safetensors.torch.save_file"
# Bytes per element of every safetensors dtype torch can hold.
SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own cap
MAX_COMPRESSION_RATIO = 1000
MAX_LISTED = 10


@dataclass(frozen=True)
class WeightLimits:
    """Resource caps for one weights file; the defaults fit any model autoprune can prune."""

    max_file_bytes: int = 2 * GiB
    max_uncompressed_bytes: int = 4 * GiB
    max_tensor_elements: int = 1_000_000_000


def read_state_dict(path: str | os.PathLike[str], limits: WeightLimits = WeightLimits()) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` after checking its format and sizes (see module doc)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in REFUSED_SUFFIXES:
        raise UnsafeInputError(
            f"{path.name}: {REFUSED_SUFFIXES[suffix]} is refused as input; .pt2 (torch.export) "
            "and TorchScript are autoprune outputs only, because loading them can run pickled "
            f"code; {SAVE_HINT}"
        )
    if suffix not in ACCEPTED_SUFFIXES:
        raise ModelIntakeError(
            f"{path.name}: unsupported weights file type {suffix or '(none)'!r}; "
            f"accepted: {', '.join(ACCEPTED_SUFFIXES)}"
        )
    size = _checked_size(path, limits)
    if suffix == SAFETENSORS_SUFFIX:
        _check_safetensors_header(path, size, limits)
        try:
            raw: object = safetensors.torch.load_file(path, device="cpu")
        except Exception as exc:
            raise ModelIntakeError(f"{path.name}: not a valid safetensors file: {exc}") from exc
    else:
        raw = _torch_load(path, limits)
    return _as_state_dict(raw, path.name)


def load_weights(model: nn.Module, path: str | os.PathLike[str], limits: WeightLimits = WeightLimits()) -> None:
    """Load ``path`` into ``model`` strictly, explaining any key or shape mismatch by name."""
    state = read_state_dict(path, limits)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_listing(unexpected)}")
        raise ModelIntakeError(f"{Path(path).name} does not fit the model: {'; '.join(parts)}")
    for key, want in expected.items():
        got = state[key]
        if got.shape != want.shape:
            raise ModelIntakeError(f"{key}: file has {tuple(got.shape)}, model expects {tuple(want.shape)}")
        state[key] = got.to(dtype=want.dtype)
    model.load_state_dict(state, strict=True)


def _listing(keys: list[str]) -> str:
    more = f", ... (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more


def _checked_size(path: Path, limits: WeightLimits) -> int:
    if not path.is_file():
        raise ModelIntakeError(f"weights file not found: {path}")
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise UnsafeInputError(f"{path.name} is {size} bytes, over the limit of {limits.max_file_bytes} bytes")
    return size


def _check_safetensors_header(path: Path, size: int, limits: WeightLimits) -> None:
    """Validate the JSON header against the file size before safetensors allocates anything."""
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ModelIntakeError(f"{path.name}: too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_SAFETENSORS_HEADER:
            raise UnsafeInputError(f"{path.name}: safetensors header of {header_len} bytes refused")
        if header_len > size - 8:
            raise ModelIntakeError(
                f"{path.name}: header claims {header_len} bytes but the file has {size - 8} left; "
                "the file is truncated or not safetensors"
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ModelIntakeError(f"{path.name}: unreadable safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelIntakeError(f"{path.name}: safetensors header is not a JSON object")
    data_bytes = size - 8 - header_len
    for name, info in header.items():
        if name != "__metadata__":
            _check_safetensors_entry(f"{path.name}: tensor {name!r}", info, data_bytes, limits)


def _check_safetensors_entry(where: str, info: Any, data_bytes: int, limits: WeightLimits) -> None:
    if not isinstance(info, dict):
        raise ModelIntakeError(f"{where}: header entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_ITEMSIZE:
        raise ModelIntakeError(f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ModelIntakeError(f"{where}: malformed shape {shape!r}")
    numel = math.prod(shape)
    if numel > limits.max_tensor_elements:
        raise UnsafeInputError(f"{where}: declares {numel} elements, over the limit of {limits.max_tensor_elements}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise ModelIntakeError(f"{where}: malformed data_offsets {offsets!r}")
    begin, end = offsets
    if not begin <= end <= data_bytes:
        raise ModelIntakeError(
            f"{where}: data_offsets {offsets} fall outside the {data_bytes} data bytes present; "
            "the file is truncated or corrupt"
        )
    if end - begin != numel * SAFETENSORS_ITEMSIZE[dtype]:
        raise ModelIntakeError(f"{where}: {end - begin} data bytes do not match {dtype} with shape {shape}")


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _torch_load(path: Path, limits: WeightLimits) -> object:
    """``torch.load`` restricted to tensors and plain containers; never a pickle fallback."""
    if zipfile.is_zipfile(path):
        _check_zip(path, limits)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        raise UnsafeInputError(
            f"{path.name} contains pickled code or objects (for example a whole nn.Module saved "
            f"with torch.save(model)), which autoprune refuses to load; {SAVE_HINT} "
            f"(reason: {_unpickler_reason(exc)})"
        ) from exc
    except Exception as exc:
        raise ModelIntakeError(f"{path.name} could not be read as a weights-only torch checkpoint: {exc}") from exc


def _unpickler_reason(exc: Exception) -> str:
    """The one useful line of torch's weights-only error, without its advice to disable it."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker not in text:
        return " ".join(text.split())[:200]
    reason = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
    return " ".join(reason.split()).split(". Please", 1)[0]


def _check_zip(path: Path, limits: WeightLimits) -> None:
    """Refuse zip bombs using sizes declared in the central directory, before extracting."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelIntakeError(f"{path.name}: corrupt zip checkpoint: {exc}") from exc
    max_member = limits.max_tensor_elements * 8
    for m in members:
        if m.file_size > max_member:
            raise UnsafeInputError(
                f"{path.name}: member {m.filename!r} declares {m.file_size} bytes, more than "
                f"{limits.max_tensor_elements} 8-byte elements"
            )
    total = sum(m.file_size for m in members)
    if total > limits.max_uncompressed_bytes:
        raise UnsafeInputError(
            f"{path.name}: declares {total} uncompressed bytes, over the limit of {limits.max_uncompressed_bytes}"
        )
    packed = sum(m.compress_size for m in members)
    if total > MAX_COMPRESSION_RATIO * max(packed, 1):
        raise UnsafeInputError(
            f"{path.name}: compression ratio {total / max(packed, 1):.0f} exceeds "
            f"{MAX_COMPRESSION_RATIO}; refusing a likely zip bomb"
        )


def _as_state_dict(raw: object, name: str) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}``-style checkpoints and DataParallel's ``module.`` prefix."""
    if not isinstance(raw, Mapping):
        raise ModelIntakeError(f"{name}: expected a state dict, found {type(raw).__name__}")
    wrappers = [k for k in WRAPPER_KEYS if isinstance(raw.get(k), Mapping)]
    if len(wrappers) > 1:
        raise ModelIntakeError(f"{name}: ambiguous checkpoint with several state dicts under {wrappers}")
    state = raw[wrappers[0]] if wrappers else raw
    for key, value in state.items():
        if not isinstance(key, str):
            raise ModelIntakeError(f"{name}: state dict key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise ModelIntakeError(f"{name}: entry {key!r} is a {type(value).__name__}, not a tensor")
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):
        return {k.removeprefix(prefix): v for k, v in state.items()}
    return dict(state)
