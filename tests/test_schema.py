from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from autoliver.errors import UserError
from autoliver.schema import dumps, from_jsonable, read_document, to_jsonable, write_json


@dataclass(frozen=True)
class Inner:
    patch_size: tuple[int, ...]
    spacing: tuple[float, float, float]


@dataclass(frozen=True)
class Outer:
    schema_version: int
    name: str
    configs: dict[str, Inner]
    note: str | None = None
    reasons: dict[str, str] = field(default_factory=dict)


DOC = Outer(1, "x", {"3d": Inner((64, 128, 128), (1.0, 0.8, 0.8))})


def test_round_trip_is_exact_and_canonical(tmp_path):
    write_json(tmp_path / "a.json", DOC)
    assert read_document(Outer, tmp_path / "a.json", schema_version=1) == DOC
    assert dumps(DOC) == dumps(from_jsonable(Outer, to_jsonable(DOC)))
    assert dumps(DOC).index('"configs"') < dumps(DOC).index('"name"')  # sorted keys


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["configs"]["3d"].update(patch_size=[64, "a", 128]), r"\$.configs.3d.patch_size\[1\]: must be an integer"),
    (lambda d: d["configs"]["3d"].update(spacing=[1, 2]), r"\$.configs.3d.spacing: must have 3 entries"),
    (lambda d: d.update(nmae="y"), r"unknown key 'nmae'. Did you mean 'name'\?"),
    (lambda d: d.pop("name"), r"missing key 'name'"),
    (lambda d: d.update(name=True), r"\$.name: must be a string"),
])
def test_strict_reading_names_the_key_path(mutate, message):
    data = to_jsonable(DOC)
    mutate(data)
    with pytest.raises(UserError, match=message):
        from_jsonable(Outer, data)


def test_wrong_schema_version_is_rejected(tmp_path):
    write_json(tmp_path / "a.json", DOC)
    with pytest.raises(UserError, match="schema_version must be 2, got 1"):
        read_document(Outer, tmp_path / "a.json", schema_version=2)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    write_json(tmp_path / "a.json", DOC)
    write_json(tmp_path / "a.json", DOC)
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
