"""One compressed, chunked file per preprocessed case, readable a patch at a time.

For each case in ``{preprocessed}/{dataset}/{data_identifier}/``:

    {case}.b2nd        image, float32, (C, z, y, x)   C = channels (or phases)
    {case}_seg.b2nd    labels, int8,   (1, z, y, x)   0 background, 1 liver, 2 tumour, …
    {case}.json        properties (geometry, crop box, spacings, class locations, …), compact JSON

Files are Blosc2 NDArrays (zstd, chunked): slicing one opened with :func:`open_case` decompresses
only the chunks a patch touches, so training never loads whole cases. Every file is written under
a temporary name and renamed; the properties file is written last and marks the case complete,
so a killed run never leaves a case that looks finished. Temporary files of a killed writer are
named ``.{file}.tmp{pid}…`` and removed by :func:`remove_stale_temporaries` once that process is gone.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import blosc2
import numpy as np

from autoliver.schema import atomic_write_text, read_json, to_jsonable

IMAGE_SUFFIX = ".b2nd"
SEG_SUFFIX = "_seg.b2nd"
PROPS_SUFFIX = ".json"
# zstd level 1 with byte shuffle: on CT data as small as level 3 (within 1 %) but 3x faster to
# write and faster to read patches from; nnU-Net's level 8 is slower still for no gain.
CLEVEL = 1
# Temporary names: ``.{file}.tmp{pid}…`` (arrays here, JSON via autoliver.schema.atomic_write_text).
_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)")


def _chunks(shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Chunks of ~ (C, 32, 128, 128) and blocks of (C, 8, 32, 32): 3D patches and 2D slices both
    decompress little more than they need."""
    c, z, y, x = shape
    chunks = (c, min(z, 32), min(y, 128), min(x, 128))
    blocks = (c, min(z, 8), min(y, 32), min(x, 32))
    return chunks, blocks


def _write_array(path: Path, array: np.ndarray, nthreads: int = 1) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{IMAGE_SUFFIX}")
    chunks, blocks = _chunks(array.shape)
    try:
        blosc2.asarray(np.ascontiguousarray(array), urlpath=str(tmp), mode="w", chunks=chunks, blocks=blocks,
                       cparams={"codec": blosc2.Codec.ZSTD, "clevel": CLEVEL, "nthreads": nthreads})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def case_files(folder: str | os.PathLike, case: str) -> tuple[Path, Path, Path]:
    folder = Path(folder)
    return folder / f"{case}{IMAGE_SUFFIX}", folder / f"{case}{SEG_SUFFIX}", folder / f"{case}{PROPS_SUFFIX}"


def write_case(folder: str | os.PathLike, case: str, image: np.ndarray, seg: np.ndarray | None,
               properties: dict, nthreads: int = 1) -> None:
    """Store one case. ``image`` (C, z, y, x) float32; ``seg`` (1, z, y, x) int8 or None (inference)."""
    if image.ndim != 4:
        raise ValueError(f"write_case({case}): image must be (C, z, y, x), got shape {image.shape}")
    if seg is not None and (seg.ndim != 4 or seg.shape[1:] != image.shape[1:]):
        raise ValueError(f"write_case({case}): seg shape {seg.shape} does not match image {image.shape}")
    img_path, seg_path, props_path = case_files(folder, case)
    img_path.parent.mkdir(parents=True, exist_ok=True)
    props_path.unlink(missing_ok=True)  # the case is incomplete until the properties are back
    _write_array(img_path, image.astype(np.float32, copy=False), nthreads)
    if seg is not None:
        _write_array(seg_path, seg.astype(np.int8, copy=False), nthreads)
    # Compact (one line): class locations hold tens of thousands of numbers.
    atomic_write_text(props_path, json.dumps(to_jsonable(properties), sort_keys=True, separators=(",", ":"),
                                             allow_nan=False) + "\n")


def read_properties(folder: str | os.PathLike, case: str) -> dict:
    return read_json(case_files(folder, case)[2])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) writes nothing any more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary array files left by writers that no longer run (e.g. a killed run)."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMPORARY.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def is_complete(folder: str | os.PathLike, case: str) -> bool:
    img, _, props = case_files(folder, case)
    return props.is_file() and img.is_file()


def list_cases(folder: str | os.PathLike) -> list[str]:
    """Complete cases in a preprocessed folder, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(PROPS_SUFFIX)] for p in folder.glob(f"*{PROPS_SUFFIX}")
                  if not p.name.startswith(".") and is_complete(folder, p.name[: -len(PROPS_SUFFIX)]))


@dataclass
class CaseArrays:
    """A stored case opened lazily: index ``image``/``seg`` like NumPy arrays to read a patch."""

    case: str
    image: "blosc2.NDArray"
    seg: "blosc2.NDArray | None"
    properties: dict

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])


def open_case(folder: str | os.PathLike, case: str) -> CaseArrays:
    img_path, seg_path, props_path = case_files(folder, case)
    props = read_json(props_path)
    image = blosc2.open(str(img_path), mode="r")
    seg = blosc2.open(str(seg_path), mode="r") if seg_path.is_file() else None
    return CaseArrays(case, image, seg, props)


def load_case(folder: str | os.PathLike, case: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Whole case as NumPy arrays (for validation and inversion)."""
    c = open_case(folder, case)
    return c.image[...], (c.seg[...] if c.seg is not None else None), c.properties
