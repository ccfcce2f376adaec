"""Loading the compiled CPU kernels: every source in csrc/cpu has its module, and a missing one
fails loudly where AUTOLIVER_REQUIRE_EXT=1 (CI), instead of letting kernel tests compare the
reference implementation with itself."""
from pathlib import Path

import pytest

from autoliver.ops import _ext

CPU_SOURCES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "csrc" / "cpu").glob("*.cpp"))


def test_the_kernel_list_is_what_the_ops_load():
    assert CPU_SOURCES == ["bilateral", "components", "crf", "mixed_pool"]


@pytest.mark.parametrize("name", CPU_SOURCES)
def test_every_cpu_kernel_is_built(name, monkeypatch):
    monkeypatch.delenv("AUTOLIVER_DISABLE_EXT", raising=False)
    mod = _ext.load(name)  # raises under AUTOLIVER_REQUIRE_EXT=1 when the module is missing
    if mod is None:
        pytest.skip(f"compiled kernel {name!r} not built here (CI sets AUTOLIVER_REQUIRE_EXT=1 and fails instead)")
    assert Path(mod.__file__).name.startswith(name + ".")


def test_required_but_missing_kernel_is_an_error(monkeypatch):
    monkeypatch.setenv("AUTOLIVER_REQUIRE_EXT", "1")
    with pytest.raises(RuntimeError, match="'no_such_kernel' is not available .* AUTOLIVER_REQUIRE_EXT=1"):
        _ext.load("no_such_kernel")


def test_missing_kernel_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setenv("AUTOLIVER_REQUIRE_EXT", "0")
    monkeypatch.setattr(_ext, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="'no_such_kernel' is not available"):
        assert _ext.load("no_such_kernel") is None
    assert "no_such_kernel" in _ext._WARNED


def test_disabling_wins_over_requiring(monkeypatch):
    """AUTOLIVER_DISABLE_EXT=1 is how the fallback tests run the reference path on purpose."""
    monkeypatch.setenv("AUTOLIVER_REQUIRE_EXT", "1")
    monkeypatch.setenv("AUTOLIVER_DISABLE_EXT", "1")
    assert _ext.load(CPU_SOURCES[0]) is None
