"""Strict conversion between frozen dataclasses and JSON documents.

Used by every versioned document autoliver writes (fingerprint, plans, recipes, properties).
Reading names the offending key path (``plans.configurations.3d_fullres.patch_size[1]``), rejects
unknown and missing keys, and writing is canonical (sorted keys, fixed indentation) so golden files
diff cleanly.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Union

from autoliver.errors import UserError


def to_jsonable(obj: Any) -> Any:
    """Dataclasses → dicts, tuples → lists, recursively; floats and ints stay as they are."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return obj


def dumps(obj: Any) -> str:
    """Canonical JSON text of a dataclass or plain structure."""
    return json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def temporary_prefix(path: str | os.PathLike) -> str:
    """Prefix of a temporary file that will become ``path``: hidden, and carrying the writer's
    pid so a later run can tell (and remove) what a killed writer left behind."""
    return f".{Path(path).name}.tmp{os.getpid()}."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give a finished temporary file the permissions a plain open() would, then rename it into
    place (mkstemp creates files readable by the owner only)."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write(path: str | os.PathLike, write, binary: bool = True) -> None:
    """Write a file through ``write(f)`` so that a crash never leaves a half-written file under the
    final name: a temporary file beside it, flushed to disk, then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps(obj))


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found.") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}). Fix or delete the file and re-run.") from None


def from_jsonable(cls: Any, data: Any, where: str = "$") -> Any:
    """Build ``cls`` (a dataclass or typing construct) from JSON data, strictly.

    Raises UserError naming the key path on a missing key, an unknown key or a wrong type.
    """
    origin = typing.get_origin(cls)
    args = typing.get_args(cls)
    if cls is Any:
        return data
    if origin in (Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return from_jsonable(a, data, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if len(errors) == 1 else f"{where}: no type of {cls} fits {data!r}")
    if dataclasses.is_dataclass(cls):
        if not isinstance(data, dict):
            raise UserError(f"{where}: must be an object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            from autoliver.errors import did_you_mean

            raise UserError(f"{where}: unknown key {unknown[0]!r}.{did_you_mean(unknown[0], fields)}")
        kwargs = {}
        for name, f in fields.items():
            if name not in data:
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                    continue
                raise UserError(f"{where}: missing key {name!r}")
            kwargs[name] = from_jsonable(hints[name], data[name], f"{where}.{name}")
        return cls(**kwargs)
    if origin is tuple:
        if not isinstance(data, (list, tuple)):
            raise UserError(f"{where}: must be a list, got {data!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_jsonable(args[0], v, f"{where}[{i}]") for i, v in enumerate(data))
        if len(args) != len(data):
            raise UserError(f"{where}: must have {len(args)} entries, got {len(data)}")
        return tuple(from_jsonable(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data)))
    if origin is list:
        if not isinstance(data, list):
            raise UserError(f"{where}: must be a list, got {data!r}")
        return [from_jsonable(args[0], v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise UserError(f"{where}: must be an object, got {data!r}")
        return {k: from_jsonable(args[1], v, f"{where}.{k}") for k, v in data.items()}
    if cls is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise UserError(f"{where}: must be a number, got {data!r}")
        return float(data)
    if cls is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise UserError(f"{where}: must be an integer, got {data!r}")
        return data
    if cls is bool:
        if not isinstance(data, bool):
            raise UserError(f"{where}: must be true or false, got {data!r}")
        return data
    if cls is str:
        if not isinstance(data, str):
            raise UserError(f"{where}: must be a string, got {data!r}")
        return data
    if origin is typing.Literal:
        if data not in args:
            raise UserError(f"{where}: must be one of {list(args)}, got {data!r}")
        return data
    raise TypeError(f"from_jsonable: unsupported type {cls!r} at {where}")


def read_document(cls: Any, path: str | os.PathLike, *, schema_version: int | None = None) -> Any:
    """Read a versioned JSON document into ``cls``; errors name the file and the key path."""
    data = read_json(path)
    if schema_version is not None and isinstance(data, dict):
        got = data.get("schema_version")
        if got != schema_version:
            raise UserError(
                f"{path}: schema_version must be {schema_version}, got {got!r}. "
                "Re-create the file with this version of autoliver."
            )
    try:
        return from_jsonable(cls, data, "$")
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
