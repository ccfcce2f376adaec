"""Preprocessing a dataset on disk: resume, stale settings, a corrupt case among good ones, a run
killed with SIGKILL and restarted, the folder lock, and the CLI's exit code and summary."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from autoliver.cli import main
from autoliver.datasets.dataset import parse_dataset_json
from autoliver.errors import UserError
from autoliver.io.images import write_image
from autoliver.planning.plan import ChannelNormalization, write_plan
from autoliver.preprocessing import storage
from autoliver.preprocessing.run import LOG_NAME, _FolderLock, estimate_case_bytes, preprocess_dataset
from test_preprocessing_pipeline import LABELS, configuration, make_plan, phantom_ct

NAME = "Dataset900_Phantom"


def write_dataset(raw: Path, n: int, shape=(20, 48, 48)):
    folder = raw / NAME
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(n):
        img, seg = phantom_ct(shape=shape, seed=i)
        write_image(folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz", img.array, img.geometry)
        write_image(folder / "labelsTr" / f"case_{i:03d}.nii.gz", seg, img.geometry)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": n, "file_ending": ".nii.gz"}))
    return parse_dataset_json(folder)


def shared_plan():
    full = configuration("3d_fullres", spacing=(2.0, 1.0, 1.0))
    two_d = configuration("2d", spacing=(2.0, 1.0, 1.0), identifier=full.data_identifier, dims=2)
    return make_plan(full, two_d)


def test_preprocess_dataset_skips_complete_cases_and_redoes_stale_ones(autoliver_dirs):
    info = write_dataset(autoliver_dirs["raw"], 3)
    plan = shared_plan()
    prep = autoliver_dirs["preprocessed"]
    folder = prep / NAME / "autoliverPlans_3d_fullres"
    folder.mkdir(parents=True)
    leftover = folder / ".case_000.b2nd.tmp999999.b2nd"  # from a writer that no longer exists
    leftover.write_bytes(b"half")

    (s,) = preprocess_dataset(info, plan, prep, num_processes=1)
    assert (s.data_identifier, s.configurations) == ("autoliverPlans_3d_fullres", ["3d_fullres", "2d"])
    assert [o.case for o in s.done] == ["case_000", "case_001", "case_002"] and not s.failed
    assert storage.list_cases(folder) == ["case_000", "case_001", "case_002"]
    assert not leftover.exists()
    image, seg, props = storage.load_case(folder, "case_001")
    assert image.dtype == np.float32 and seg.dtype == np.int8 and image.shape[1:] == seg.shape[1:]
    assert props["case"] == "case_001" and set(props["class_locations"]) == {"1", "2"}
    log = (folder / LOG_NAME).read_text()
    assert "ok case_002" in log and "3 preprocessed" in log
    assert "s per case in a worker" in s.line()

    (again,) = preprocess_dataset(info, plan, prep, configurations=["2d"], num_processes=1)
    assert again.skipped == ["case_000", "case_001", "case_002"] and not again.done

    # Other settings → the stored cases are stale and are redone; --overwrite redoes everything.
    cfg = dataclasses.replace(plan.configurations["3d_fullres"],
                              normalization=(ChannelNormalization("hu_window", -100.0, 300.0),))
    changed = make_plan(cfg)
    (redo,) = preprocess_dataset(info, changed, prep, num_processes=1, cases=["case_000"])
    assert [o.case for o in redo.done] == ["case_000"]
    assert storage.read_properties(folder, "case_000")["normalization"][0]["scheme"] == "hu_window"
    (over,) = preprocess_dataset(info, changed, prep, num_processes=1, overwrite=True, cases=["case_000"])
    assert [o.case for o in over.done] == ["case_000"]
    with pytest.raises(UserError, match="not training cases"):
        preprocess_dataset(info, plan, prep, cases=["nope"])


def test_corrupt_case_fails_with_its_reason_and_the_others_complete(autoliver_dirs, capsys):
    info = write_dataset(autoliver_dirs["raw"], 4)
    (info.images_dir / "case_002_0000.nii.gz").write_bytes(b"\x1f\x8b this is not an image")
    prep = autoliver_dirs["preprocessed"]
    plan = shared_plan()
    write_plan(prep / NAME / "plans.json", plan)

    rc = main(["preprocess", "-d", "Phantom", "-c", "3d_fullres", "-np", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "1 case(s) failed" in err and "case_002" in err and "cannot read this image" in err
    assert "3 preprocessed, 0 already complete, 1 failed" in err
    assert "3 case(s) preprocessed, 0 already complete, 1 failed in" in err and "s per case" in err
    folder = prep / NAME / "autoliverPlans_3d_fullres"
    assert storage.list_cases(folder) == ["case_000", "case_001", "case_003"]
    assert "FAILED case_002" in (folder / LOG_NAME).read_text()

    # Once the file is repaired, the same command does only that case.
    img, seg = phantom_ct(shape=(20, 48, 48), seed=2)
    write_image(info.images_dir / "case_002_0000.nii.gz", img.array, img.geometry)
    assert main(["preprocess", "-d", "900", "-np", "1", "--no-progress"]) == 0
    assert "1 preprocessed, 3 already complete, 0 failed" in capsys.readouterr().err


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4: parent pid
                out.append(int(d.name))
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _workers_of(pid: int) -> list[int]:
    out = []
    for c in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes():
                out.append(c)
        except OSError:
            pass
    return out


def _wait_for(predicate, proc, seconds=90.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc to follow the worker processes")
def test_run_survives_a_killed_worker_and_resumes_after_sigkill(autoliver_dirs):
    n = 6
    info = write_dataset(autoliver_dirs["raw"], n, shape=(32, 80, 80))
    prep = autoliver_dirs["preprocessed"]
    write_plan(prep / NAME / "plans.json", shared_plan())
    folder = prep / NAME / "autoliverPlans_3d_fullres"
    proc = subprocess.Popen([sys.executable, "-m", "autoliver", "preprocess", "-d", NAME, "-np", "2", "--no-progress"],
                            env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # 1. The system kills a worker (as the out-of-memory killer would): the run goes on.
        _wait_for(lambda: storage.list_cases(folder), proc)
        os.kill(_workers_of(proc.pid)[0], signal.SIGKILL)
        # The other worker may still finish the case it holds, so wait until the run has noticed
        # the death (it then goes on one case at a time) before counting.
        log = folder / LOG_NAME
        _wait_for(lambda: "a worker process died" in log.read_text(), proc)
        first = len(storage.list_cases(folder))
        # 2. Then the whole run is killed with SIGKILL in the middle.
        _wait_for(lambda: len(storage.list_cases(folder)) > first, proc)
        workers = _workers_of(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert "a worker process died" in (folder / LOG_NAME).read_text()
    done = storage.list_cases(folder)
    assert 1 <= len(done) < n, "the run must be killed in the middle"
    # The workers die with their parent (nothing keeps writing behind the user's back).
    deadline = time.monotonic() + 10
    while any(_running(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers and not any(_running(p) for p in workers)
    # Whatever looks complete is complete and readable (a half-written file never has its final name).
    mtimes = {}
    for case in done:
        image, seg, props = storage.load_case(folder, case)
        assert np.isfinite(image).all() and seg.shape[1:] == image.shape[1:] and props["case"] == case
        mtimes[case] = storage.case_files(folder, case)[0].stat().st_mtime_ns

    (s,) = preprocess_dataset(info, shared_plan(), prep, num_processes=1)
    assert sorted(s.skipped) == done
    assert sorted(o.case for o in s.done) == sorted(set(info.training_cases()) - set(done))
    assert storage.list_cases(folder) == info.training_cases()
    assert all(storage.case_files(folder, c)[0].stat().st_mtime_ns == t for c, t in mtimes.items())
    assert not [p for p in folder.iterdir() if ".tmp" in p.name]


def test_a_second_run_on_the_same_folder_is_refused(autoliver_dirs):
    info = write_dataset(autoliver_dirs["raw"], 1, shape=(8, 24, 24))
    prep = autoliver_dirs["preprocessed"]
    folder = prep / NAME / "autoliverPlans_3d_fullres"
    folder.mkdir(parents=True)
    with _FolderLock(folder):
        with pytest.raises(UserError, match="another preprocessing run is writing"):
            preprocess_dataset(info, shared_plan(), prep, num_processes=1)
    (s,) = preprocess_dataset(info, shared_plan(), prep, num_processes=1)
    assert len(s.done) == 1


def test_missing_plan_and_bad_arguments_are_user_errors(autoliver_dirs, capsys):
    write_dataset(autoliver_dirs["raw"], 1, shape=(8, 24, 24))
    assert main(["preprocess", "-d", "900", "--no-progress"]) == 2
    assert "autoliver plan -d 900" in capsys.readouterr().err
    write_plan(autoliver_dirs["preprocessed"] / NAME / "plans.json", shared_plan())
    assert main(["preprocess", "-d", "900", "-c", "3d_fulres", "--no-progress"]) == 2
    assert "Did you mean '3d_fullres'" in capsys.readouterr().err
    assert main(["preprocess", "-d", "900", "-np", "0", "--no-progress"]) == 2


def test_memory_estimate_covers_a_large_ct():
    # 512 x 512 x 900 int16 at 0.7 mm to (1.0, 0.77, 0.77): measured peak of one worker ~3 GB.
    est = estimate_case_bytes(512 * 512 * 900, 2, 1, 0.7 / 1.0 * (0.7 / 0.77) ** 2)
    assert 2.5 * 2**30 < est < 4.5 * 2**30


def test_plan_and_preprocess_runs_every_stage(autoliver_dirs, capsys):
    write_dataset(autoliver_dirs["raw"], 2, shape=(24, 64, 64))
    rc = main(["plan_and_preprocess", "-d", "Phantom", "-np", "1", "--no-progress", "--preset", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    plan_path = autoliver_dirs["preprocessed"] / NAME / "plans.json"
    assert plan_path.is_file()
    from autoliver.planning.plan import read_plan

    plan = read_plan(plan_path)
    for cfg in plan.configurations.values():
        assert storage.list_cases(autoliver_dirs["preprocessed"] / NAME / cfg.data_identifier) == \
            ["case_000", "case_001"]


def test_more_cases_than_a_pool_round_all_complete(autoliver_dirs, monkeypatch):
    """Pools are renewed every workers × MAX_CASES_PER_WORKER cases; with CPython's own
    max_tasks_per_child and a backlog of cases the pool stopped replacing its workers and hung."""
    from autoliver.preprocessing import run as prun

    monkeypatch.setattr(prun, "MAX_CASES_PER_WORKER", 2)
    info = write_dataset(autoliver_dirs["raw"], 9, shape=(12, 32, 32))
    plan = make_plan(configuration("3d_fullres", spacing=(2.0, 1.0, 1.0)))
    result = {}

    def work():
        result["summaries"] = preprocess_dataset(info, plan, autoliver_dirs["preprocessed"], num_processes=2)

    import threading

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "preprocessing hung"
    (summary,) = result["summaries"]
    assert not summary.failed
    folder = autoliver_dirs["preprocessed"] / NAME / plan.configurations["3d_fullres"].data_identifier
    assert storage.list_cases(folder) == [f"case_{i:03d}" for i in range(9)]
