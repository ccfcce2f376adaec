"""CUDA kernels that cannot be built fall back with exactly one warning and are not rebuilt."""
from __future__ import annotations

import warnings

import pytest

from autoliver.ops import _cuda


def test_unbuildable_kernel_warns_once_and_is_not_retried(monkeypatch):
    calls = []

    def failing(name):
        calls.append(name)
        raise RuntimeError("nvcc missing")

    monkeypatch.setattr(_cuda, "load_cuda", failing)
    monkeypatch.setattr(_cuda, "_UNAVAILABLE", set())
    with pytest.warns(RuntimeWarning, match="CUDA demo kernel unavailable \\(nvcc missing\\); on the CPU"):
        assert _cuda.try_load_cuda("demo", "on the CPU") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _cuda.try_load_cuda("demo", "on the CPU") is None
    assert calls == ["demo"]


def test_every_cuda_source_is_found():
    names = {p.stem for p in _cuda.cuda_sources()}
    assert {"bilateral", "components", "crf", "mixed_pool"} <= names


# --- the build: cache key and ninja -------------------------------------------------------------

def _toolchain(**changes):
    base = dict(nvcc="/opt/cuda/bin/nvcc", nvcc_version="Cuda compilation tools, release 13.0, V13.0.88",
                archs=("sm_90",), flags=_cuda.NVCC_FLAGS)
    return _cuda.Toolchain(**{**base, **changes})


def test_cache_key_changes_with_architecture_nvcc_version_and_flags():
    base = _toolchain().key()
    assert _toolchain(archs=("sm_80",)).key() != base
    assert _toolchain(archs=("sm_80", "sm_90")).key() != base
    assert _toolchain(nvcc_version="Cuda compilation tools, release 12.4, V12.4.131").key() != base
    assert _toolchain(flags=(*_cuda.NVCC_FLAGS, "-lineinfo")).key() != base
    # the same compiler found by another path builds the same code
    assert _toolchain(nvcc="/usr/local/cuda-13.0/bin/nvcc").key() == base
    assert len({_toolchain(archs=(a,)).key() for a in ("sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "sm_90")}) == 6


def test_library_path_changes_with_the_source_and_names_the_architecture(tmp_path):
    (tmp_path / "cuda").mkdir()
    src = tmp_path / "cuda" / "demo.cu"
    src.write_text("// version 1\n")
    first = _cuda.library_path(tmp_path / "cache", _toolchain(), src)
    assert first.parent.name == f"sm_90-{_toolchain().key()}"
    assert first.name.startswith("demo-") and first.suffix == ".so"
    assert _cuda.library_path(tmp_path / "cache", _toolchain(), src) == first
    src.write_text("// version 2\n")
    second = _cuda.library_path(tmp_path / "cache", _toolchain(), src)
    assert second.parent == first.parent and second != first
    (tmp_path / "common.h").write_text("#define X 1\n")  # a shared header counts too
    assert _cuda.library_path(tmp_path / "cache", _toolchain(), src) != second
    assert _cuda.library_path(tmp_path / "cache", _toolchain(archs=("sm_80",)), src).parent != first.parent


def test_arch_flags_embed_machine_code_and_ptx():
    assert _cuda.arch_flags(("sm_86", "sm_90")) == [
        "-gencode=arch=compute_86,code=[sm_86,compute_86]",
        "-gencode=arch=compute_90,code=[sm_90,compute_90]",
    ]


def test_ninja_file_has_one_edge_per_source_and_escapes_paths(tmp_path):
    src = tmp_path / "my dir" / "cuda" / "a.cu"
    out = tmp_path / "c:ache" / "a-0123.so"
    text = _cuda.ninja_file(_toolchain(), {src: out})
    assert text.count("\nbuild ") == 1
    assert f"build {str(out).replace(':', '$:')}: nvcc {str(src).replace(' ', '$ ')}\n" in text
    assert "-gencode=arch=compute_90,code=[sm_90,compute_90]" in text and "--use_fast_math" in text
    assert f"  src = '{src}'" in text  # shell-quoted in the command
    assert " -shared $src -o $tmp && mv -f $tmp $out" in text
    assert " -c $src " in _cuda.ninja_file(_toolchain(), {src: out}, shared=False)


FAKE_NVCC = """#!{python}
# Stands in for nvcc: logs each compile, fails on '#error', links an empty shared library.
import subprocess, sys
args = sys.argv[1:]
if args == ["--version"]:
    print("fake nvcc, release 0.0")
    raise SystemExit(0)
src = next(a for a in args if a.endswith(".cu"))
out = args[args.index("-o") + 1]
with open({log!r}, "a") as f:
    f.write(src.rsplit("/", 1)[-1] + "\\n")
if "#error" in open(src).read():
    print(src + ": error: this kernel does not compile", file=sys.stderr)
    raise SystemExit(1)
raise SystemExit(subprocess.call(["cc", "-shared", "-x", "c", "/dev/null", "-o", out]))
"""


@pytest.fixture
def fake_nvcc(tmp_path):
    if _cuda.ninja() is None:
        pytest.skip("ninja not installed (it is a dependency of autoliver: pip install ninja)")
    import shutil
    import sys

    if shutil.which("cc") is None:
        pytest.skip("no C compiler to make the fake nvcc's libraries")
    log = tmp_path / "nvcc.log"
    exe = tmp_path / "bin" / "nvcc"
    exe.parent.mkdir()
    exe.write_text(FAKE_NVCC.format(python=sys.executable, log=str(log)))
    exe.chmod(0o755)
    return exe, log


def _compiled(log):
    return sorted(log.read_text().split()) if log.exists() else []


def test_ninja_builds_all_in_one_call_then_only_what_changed(tmp_path, fake_nvcc):
    exe, log = fake_nvcc
    srcdir = tmp_path / "csrc" / "cuda"
    srcdir.mkdir(parents=True)
    sources = [srcdir / f"{n}.cu" for n in ("a", "b", "c")]
    for s in sources:
        s.write_text(f"// kernel {s.stem}\n")
    toolchain = _toolchain(nvcc=str(exe), nvcc_version="fake nvcc, release 0.0")
    cache = tmp_path / "cache"

    def build():
        targets = {s: _cuda.library_path(cache, toolchain, s) for s in sources}
        return _cuda.run_ninja(_cuda.build_dir(cache, toolchain), toolchain, targets, jobs=2)

    result = build()
    assert sorted(result.built) == ["a", "b", "c"] and result.failed == {}
    assert _compiled(log) == ["a.cu", "b.cu", "c.cu"]
    assert all(p.exists() and not p.with_name(p.name + ".tmp").exists() for p in result.built.values())

    log.unlink()
    assert sorted(build().built) == ["a", "b", "c"]
    assert _compiled(log) == []  # nothing changed: ninja does nothing

    old_b = _cuda.library_path(cache, toolchain, sources[1])
    sources[1].write_text("// kernel b, edited\n")
    result = build()
    assert _compiled(log) == ["b.cu"]  # one edited source: one compile
    assert result.built["b"] != old_b and old_b.exists()  # the loaded library is never overwritten

    log.unlink()
    sources[2].write_text("#error broken\n")
    result = build()
    assert sorted(result.built) == ["a", "b"] and list(result.failed) == ["c"]
    assert "c.cu: error: this kernel does not compile" in result.failed["c"]
    assert _compiled(log) == ["c.cu"]


def test_load_cuda_builds_into_a_folder_per_architecture(tmp_path, fake_nvcc, monkeypatch):
    exe, log = fake_nvcc
    monkeypatch.setenv("AUTOLIVER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_cuda, "nvcc", lambda: str(exe))
    monkeypatch.setattr(_cuda, "gpu_architectures", lambda: ("sm_86",))
    _cuda.load_cuda.cache_clear()
    try:
        lib = _cuda.load_cuda("bilateral")
        n_sources = len(_cuda.cuda_sources())
        assert len(_compiled(log)) == n_sources  # the first use builds every kernel at once
        assert lib._name.startswith(str(tmp_path / "cache" / "cuda" / "sm_86-"))
        _cuda.load_cuda.cache_clear()
        _cuda.load_cuda("components")
        assert len(_compiled(log)) == n_sources  # already built: no compiler call
        monkeypatch.setattr(_cuda, "gpu_architectures", lambda: ("sm_90",))
        _cuda.load_cuda.cache_clear()
        assert _cuda.load_cuda("bilateral")._name.startswith(str(tmp_path / "cache" / "cuda" / "sm_90-"))
        assert len(_compiled(log)) == 2 * n_sources  # another GPU: built afresh
    finally:
        _cuda.load_cuda.cache_clear()


def test_cuda_check_compiles_every_source_through_ninja(fake_nvcc, monkeypatch, capsys):
    from autoliver.ops import cuda_check

    exe, log = fake_nvcc
    monkeypatch.setattr(cuda_check, "nvcc", lambda: str(exe))
    assert cuda_check.main(["--arch", "sm_80"]) == 0
    out = capsys.readouterr().out
    n = len(_cuda.cuda_sources())
    assert f"cuda_check: {n} of {n} CUDA sources compile for sm_80" in out
    assert len(_compiled(log)) == n
