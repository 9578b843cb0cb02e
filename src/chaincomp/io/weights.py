"""Safetensors weights: a checked header before any data is read, finite tensors only, never unpickled."""
from __future__ import annotations

import math
import os
import stat
import struct
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from safetensors.torch import load_file, save_file

from ..errors import NonFiniteError, UserError, one_line
from .files import (
    replaced_atomically,
    MAX_SAFETENSORS_HEADER,
    _json_kind,
    _parse_json,
    _reason,
    _validation_line,
    _what_is,
)

# ---- weights --------------------------------------------------------------------------------------

# The safetensors dtypes the tool loads: the ones torch computes with and can check for NaN.
SAFETENSORS_DTYPES: dict[str, int] = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                                      "I8": 1, "U8": 1, "BOOL": 1}
_Nat = Annotated[int, Field(ge=0, le=2**62, strict=True)]


class SafetensorsTensor(BaseModel):
    """One tensor's entry of a safetensors header: the schema io.py reads it with."""

    model_config = ConfigDict(extra="forbid")
    dtype: Literal["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"]
    shape: list[_Nat] = Field(max_length=16)
    data_offsets: tuple[_Nat, _Nat]


_TENSORS = TypeAdapter(dict[str, SafetensorsTensor])
_METADATA = TypeAdapter(dict[str, str])


class SafetensorsHeader(BaseModel):
    """A checked safetensors header: what `read_safetensors_header` returns."""

    tensors: dict[str, SafetensorsTensor]
    metadata: dict[str, str]
    data_bytes: int


def read_safetensors_header(path: str | Path) -> SafetensorsHeader:
    """The header of safetensors file `path`, checked before a byte of tensor data is touched: the
    8-byte length (within the file and MAX_SAFETENSORS_HEADER), a JSON object with no key twice,
    each tensor's dtype (one torch computes with), shape and offsets (the dtype's size times the
    shape, inside the data, no overlap or gap), and string metadata. Any fault is one UserError line."""
    path = Path(path)
    hint = "the file is damaged or not safetensors; give weights saved by chaincomp or safetensors"
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{path}: is {_what_is(st.st_mode)}, not a weights file; give a .safetensors file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: {len(head)} bytes is too short for a safetensors file; {hint}")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_SAFETENSORS_HEADER or n > size - 8 or n < 2:
                raise UserError(f"{path}: header length {n} does not fit the file ({size} bytes); {hint}")
            raw = f.read(n)
    except FileNotFoundError:
        raise UserError(f"{path}: weights file not found; give the path of a .safetensors file") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read ({_reason(e)})") from None
    if len(raw) != n:
        raise UserError(f"{path}: cut short in its header; {hint}")
    header = _parse_json(path, raw.rstrip(b" "), allow_nan=False, hint=hint)
    if not isinstance(header, dict):
        raise UserError(f"{path}: its header is a JSON {_json_kind(header)}, not an object; {hint}")
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta
    try:
        metadata = _METADATA.validate_python(meta, strict=True)
        tensors = _TENSORS.validate_python(header)
    except ValidationError as e:
        raise UserError(f"{path}: header {_validation_line(e)}; {hint}") from None
    data_bytes = size - 8 - n
    spans = []
    for name, t in tensors.items():
        begin, end = t.data_offsets
        count = math.prod(t.shape)
        if end < begin or end > data_bytes or end - begin != count * SAFETENSORS_DTYPES[t.dtype]:
            raise UserError(f"{path}: tensor {one_line(repr(name), 60)} has offsets {begin}..{end} that do not "
                            f"match its shape {t.shape} and dtype {t.dtype} in {data_bytes} bytes of data; {hint}")
        spans.append((begin, end))
    pos = 0
    for begin, end in sorted(spans):
        if begin != pos:
            raise UserError(f"{path}: tensor data overlaps or leaves a gap at byte {min(begin, pos)}; {hint}")
        pos = end
    if pos != data_bytes:
        raise UserError(f"{path}: {data_bytes - pos} bytes after the last tensor; {hint}")
    return SafetensorsHeader(tensors=tensors, metadata=metadata, data_bytes=data_bytes)


def check_finite(state: dict[str, torch.Tensor], path: str | Path, *, writing: bool = False) -> None:
    """Refuse tensors holding NaN or infinity (NonFiniteError naming `path` and the first such tensor).
    Integer tensors are always finite. Why: NaN weights run, give chance-level results and, once
    checkpointed, poison every resume."""
    for name, t in state.items():
        if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all()):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            shown = one_line(repr(name), 80)
            if writing:
                raise NonFiniteError(f"{path}: refused to save weights: tensor {shown} holds {nan} NaN and {inf} "
                                     "infinite values (training diverged?); nothing was written, the last good "
                                     "checkpoint is kept", path=str(path), tensor=name)
            raise NonFiniteError(f"{path}: tensor {shown} holds {nan} NaN and {inf} infinite values; these "
                                 "weights are damaged or diverged: give weights of a healthy model",
                                 path=str(path), tensor=name)


def save_weights(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Weights go through safetensors (no code in the file), written atomically. Non-finite tensors
    are refused before anything is written (NonFiniteError), so nothing NaN is ever checkpointed."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    check_finite(tensors, path, writing=True)
    with replaced_atomically(path, "weights_written") as tmp:
        save_file(tensors, tmp, metadata=metadata)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load weights without ever unpickling: safetensors (header checked first by
    `read_safetensors_header`), or torch.load(weights_only=True) for .pt/.pth/.bin. Tensors holding
    NaN or infinity are refused (NonFiniteError naming the file and tensor)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read as weights ({_reason(e)}); give the path of a .safetensors "
                        "file") from None
    if st is None:
        raise UserError(f"{path}: weights file not found; give the path of a .safetensors file")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path}: is {_what_is(st.st_mode)}, not a weights file; give the path of a .safetensors file")
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # refusing a pickle that carries code lands here
            raise UserError(f"{path}: refused to load ({type(e).__name__}): only plain tensors are accepted; "
                            "convert the file to .safetensors") from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise UserError(f"{path}: expected a dict of tensors (a state_dict)")
        check_finite(obj, path)
        return obj
    read_safetensors_header(path)
    try:
        state = load_file(str(path))
    except BaseException as e:  # noqa: BLE001 - a Rust panic (PanicException) is a BaseException
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise
        raise UserError(f"{path}: not a readable safetensors file ({one_line(e, 120)})") from None
    check_finite(state, path)
    return state


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored with safetensors weights ({} if none or unreadable): lets a resumed
    command tell whether the weights in its folder were made with the same settings."""
    try:
        return dict(read_safetensors_header(path).metadata)
    except UserError:  # a damaged file simply does not match
        return {}
