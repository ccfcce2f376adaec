"""The training loop end to end: `autoliver train`, kill + `--c`, checkpoints, validation, 2D, cascade."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autoliver.cli import main
from autoliver.inference.sliding_window import predict_logits
from autoliver.planning.plan import write_plan
from autoliver.preprocessing import storage
from autoliver.training.checkpoint import load_trained_model
from autoliver.training.recipes import get_recipe
from autoliver.training.trainer import TrainingRun, train
from test_training_data import DATASET, make_configuration, make_plan, write_phantoms

REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is faster


@pytest.fixture
def dataset(autoliver_dirs):
    """A planned and preprocessed phantom dataset: 3d_fullres, 2d, 3d_lowres → 3d_cascade_fullres."""
    pre = autoliver_dirs["preprocessed"] / DATASET
    write_phantoms(pre / "data_3d", 5)
    plan = make_plan(
        # mixed_random pooling draws from torch's generator in every training forward pass
        make_configuration("3d_fullres", (8, 16, 16), features=(4, 8, 16), downsampling="mixed_random"),
        make_configuration("2d", (16, 16), batch_size=4),
        make_configuration("3d_lowres", (8, 16, 16)),
        make_configuration("3d_cascade_fullres", (8, 16, 16), in_channels=3, previous_stage="3d_lowres"),
    )
    write_plan(pre / "plans.json", plan)
    return plan, pre, autoliver_dirs["results"] / DATASET


def run(plan, pre, results, configuration, fold="0", epochs=2, iters=2, **kw):
    return train(TrainingRun(plan, configuration, fold, get_recipe("default"), pre, results, device="cpu", epochs=epochs,
                             iterations_per_epoch=iters, num_workers=0, **kw))


def metrics(fold_dir):
    return [json.loads(line) for line in (fold_dir / "metrics.jsonl").read_text().splitlines()]


def test_kill_and_continue_resumes_exactly(dataset):
    plan, pre, results = dataset
    epochs, iters = 8, 3
    reference = run(plan, pre, results / "reference", "3d_fullres", epochs=epochs, iters=iters, validate=False)
    expected = metrics(reference)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "autoliver", "train", "3d_fullres", "0", "--epochs", str(epochs),
           "--iters", str(iters), "--device", "cpu", "-np", "1", "--no-validation", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    fold = results / "3d_fullres" / "fold_0"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if (fold / "metrics.jsonl").is_file() and len((fold / "metrics.jsonl").read_text().splitlines()) >= 2:
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its augmentation worker
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (fold / "checkpoint_final.pt").exists(), "the run finished before it could be killed"
    done = torch.load(fold / "checkpoint_latest.pt", weights_only=True)["epoch"]
    assert 2 <= done < epochs

    # --c without it refuses to clobber; with it, continues from the latest checkpoint's epoch
    assert main(["train", "3d_fullres", "0", "--device", "cpu", "--epochs", str(epochs)]) == 2
    assert main(["train", "3d_fullres", "0", "--device", "cpu", "--epochs", str(epochs),
                 "--iters", str(iters), "-np", "0", "--c", "--no-validation"]) == 0
    got = metrics(fold)
    assert [r["epoch"] for r in got] == list(range(epochs))
    assert [r["batch_digest"] for r in got] == [r["batch_digest"] for r in expected]
    for a, b in zip(got, expected):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-6)
    final = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    ref_final = torch.load(reference / "checkpoint_final.pt", weights_only=True)
    for k, v in ref_final["network"].items():
        torch.testing.assert_close(final["network"][k], v, rtol=1e-3, atol=1e-5)


def test_a_time_budget_fixes_the_epochs_after_the_first_and_trains_like_a_run_of_that_length(dataset, monkeypatch):
    from autoliver.training import trainer

    plan, pre, results = dataset
    reference = metrics(run(plan, pre, results / "reference", "3d_fullres", epochs=3, iters=2, validate=False))
    timed = []
    monkeypatch.setattr(trainer, "epochs_for_budget", lambda minutes, seconds, steady, restart:
                        timed.append((minutes, seconds, steady, restart)) or 3)
    budgeted = run(plan, pre, results / "budget", "3d_fullres", epochs=None, iters=2, minutes=0.5, validate=False)
    assert len(timed) == 1 and timed[0][0] == 0.5 and timed[0][1] > 0 and 0 < timed[0][2] and 0 < timed[0][3] < timed[0][1]
    rows = metrics(budgeted)
    # epoch 0's learning rate does not depend on the length; later ones follow the fixed schedule
    assert [r["learning_rate"] for r in rows] == [r["learning_rate"] for r in reference]
    assert [r["batch_digest"] for r in rows] == [r["batch_digest"] for r in reference]
    assert [r["train_loss"] for r in rows] == pytest.approx([r["train_loss"] for r in reference], rel=1e-5)
    assert torch.load(budgeted / "checkpoint_final.pt", weights_only=True)["epochs"] == 3


def test_a_budgeted_run_retimes_its_schedule_after_three_epochs(dataset, monkeypatch):
    """A slow first epoch fixed too few epochs: after epoch 3 the run stretches its schedule to the
    epochs its budget holds, with the same numbered batches as a run of that length."""
    from autoliver.training import trainer

    plan, pre, results = dataset
    reference = metrics(run(plan, pre, results / "reference5", "3d_fullres", epochs=5, iters=2, validate=False))
    calls = []
    monkeypatch.setattr(trainer, "epochs_for_budget", lambda *a: 4)
    monkeypatch.setattr(trainer, "reestimated_epochs", lambda minutes, seconds, epochs: calls.append(
        (minutes, list(seconds), epochs)) or 5)
    budgeted = run(plan, pre, results / "retimed", "3d_fullres", epochs=None, iters=2, minutes=0.5, validate=False)
    assert len(calls) == 1 and calls[0][0] == 0.5 and len(calls[0][1]) == 3 and calls[0][2] == 4
    rows = metrics(budgeted)
    assert len(rows) == 5 and [r["batch_digest"] for r in rows] == [r["batch_digest"] for r in reference]
    assert rows[-1]["learning_rate"] == reference[-1]["learning_rate"]  # the schedule ends as a 5-epoch run's
    assert torch.load(budgeted / "checkpoint_final.pt", weights_only=True)["epochs"] == 5


def test_reestimated_epochs():
    from autoliver.training.trainer import reestimated_epochs

    # the benchmark's case: a 53 s first epoch fixed 23 epochs for 20 min; the next ran at 31 s
    assert reestimated_epochs(20, [53.0, 31.0, 31.0], 23) == 3 + (1200 - 115) // 31
    assert reestimated_epochs(20, [30.0, 30.0, 30.0], 40) == 40  # the first estimate held
    assert reestimated_epochs(20, [30.0, 29.0, 29.5], 40) == 40  # under two epochs apart: unchanged
    assert reestimated_epochs(10, [30.0, 60.0, 60.0], 20) == 3 + (600 - 150) // 60  # slower later: shrinks
    assert reestimated_epochs(1, [30.0, 60.0, 60.0], 20) == 4  # budget spent: one more epoch, never fewer


def test_epochs_for_budget_and_bad_budgets(dataset):
    from autoliver.errors import UserError
    from autoliver.training.trainer import epochs_for_budget

    assert epochs_for_budget(20, 30.0) == 40
    assert epochs_for_budget(1, 61.0) == 1  # never zero: the first epoch has been trained already
    # a slow first epoch (start-up) does not shrink the rest: 2 min = 33 s + 2 s restart + 8 × 10 s (+ 5 s left)
    assert epochs_for_budget(2, 33.0, 10.0, 2.0) == 9
    assert epochs_for_budget(0.5, 40.0, 1.0, 0.0) == 1
    plan, pre, results = dataset
    for epochs, minutes in ((2, 1.0), (None, 0.0), (None, -3.0)):
        with pytest.raises(UserError, match="--minutes"):
            run(plan, pre, results, "3d_fullres", epochs=epochs, minutes=minutes, validate=False)


def test_checkpoint_is_weights_only_self_describing_and_validation_is_written(dataset):
    plan, pre, results = dataset
    fold = run(plan, pre, results, "3d_fullres", epochs=2, iters=2)
    assert {p.name for p in fold.iterdir()} >= {"checkpoint_final.pt", "checkpoint_best.pt", "checkpoint_latest.pt",
                                              "metrics.jsonl", "progress.png", "validation"}
    assert (fold.parent / "plans.json").is_file()
    ckpt = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["configuration"] == "3d_fullres" and ckpt["recipe"]["name"] == "default"
    assert ckpt["plan"]["configurations"]["3d_fullres"]["patch_size"] == [8, 16, 16]
    net, plan2, config = load_trained_model(fold)
    assert plan2 == plan and config.name == "3d_fullres" and not net.training
    assert net(torch.zeros(1, 1, 8, 16, 16)).shape == (1, 3, 8, 16, 16)
    assert [tuple(o.shape[2:]) for o in net.train()(torch.zeros(1, 1, 8, 16, 16))] == [(8, 16, 16), (4, 8, 8)]
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["cases"] == 1 and len(summary["per_case"]) == 1
    liver = summary["per_case"][0]["dice_region"]["liver"]
    assert summary["mean"]["liver"]["dice_region"] == liver
    # the reported Dice is the final network's on that case: recompute it from the network's own output
    case = summary["per_case"][0]["case"]
    image, seg, _ = storage.load_case(pre / "data_3d", case)
    with torch.no_grad():
        pred = predict_logits(net.eval(), image, (8, 16, 16), step_size=0.5).argmax(0)
    got, ref = pred >= 1, seg[0] >= 1
    assert liver == pytest.approx(2 * (got & ref).sum() / (got.sum() + ref.sum()), abs=1e-6)
    # on a CPU validation does not mirror (8 passes per tile); it says so for find_best_configuration
    assert (summary["mirroring"], summary["step_size"], summary["per_case"][0]["mirrored"]) == (False, 0.5, False)
    rows = metrics(fold)
    assert [r["epoch"] for r in rows] == [0, 1] and rows[1]["learning_rate"] < rows[0]["learning_rate"]
    assert set(rows[0]["pseudo_dice"]) == {"liver", "tumour"}


def test_2d_configuration_trains_and_validates_over_slices(dataset):
    plan, pre, results = dataset
    fold = run(plan, pre, results, "2d", fold="1", epochs=1, iters=2)
    net, _, config = load_trained_model(fold, which="best")
    assert config.network.dims == 2 and net(torch.zeros(3, 1, 16, 16)).shape == (3, 3, 16, 16)
    assert json.loads((fold / "validation" / "summary.json").read_text())["cases"] == 1


def test_cascade_uses_the_previous_stage_predictions(dataset):
    plan, pre, results = dataset
    with pytest.raises(Exception, match="previous stage"):
        run(plan, pre, results, "3d_cascade_fullres", epochs=1, iters=1)
    run(plan, pre, results, "3d_lowres", fold="all", epochs=1, iters=2)
    predicted = sorted(p.name for p in (results / "3d_lowres" / "predicted_next_stage" / "3d_cascade_fullres").iterdir())
    assert predicted == [f"case_{i:03d}.b2nd" for i in range(5)]
    fold = run(plan, pre, results, "3d_cascade_fullres", epochs=1, iters=2)
    net, _, config = load_trained_model(fold)
    assert config.network.in_channels == 3 and net.encoder.stages[0][0][0].in_channels == 3
    assert json.loads((fold / "validation" / "summary.json").read_text())["cases"] == 1


def test_convlstm_configuration_trains_on_the_phases(autoliver_dirs):
    pre = autoliver_dirs["preprocessed"] / DATASET
    write_phantoms(pre / "data_dce", 3, channels=3)  # three DCE phases
    plan = make_plan(make_configuration("3d_convlstm", (8, 16, 16), arch="convlstm_unet", in_channels=3, phases=3,
                                        data_identifier="data_dce"), num_phases=3)
    fold = run(plan, pre, autoliver_dirs["results"] / DATASET, "3d_convlstm", epochs=1, iters=2)
    net, _, config = load_trained_model(fold)
    assert config.phases == 3 and net(torch.zeros(1, 3, 8, 16, 16)).shape == (1, 3, 8, 16, 16)
    assert json.loads((fold / "validation" / "summary.json").read_text())["cases"] == 1


def test_train_from_pretrained_weights(dataset, capsys):
    plan, pre, results = dataset
    run(plan, pre, results, "3d_fullres", fold="all", epochs=1, iters=1, validate=False)
    source = results / "3d_fullres" / "fold_all"
    assert main(["train", "3d_fullres", "1", "--device", "cpu", "--epochs", "1", "--iters", "1", "-np", "0",
                 "--no-validation", "--no-progress", "-pretrained_weights", str(source)]) == 0
    assert f"pretrained weights from {source / 'checkpoint_final.pt'}: " in capsys.readouterr().err
    state = torch.load(results / "3d_fullres" / "fold_1" / "checkpoint_final.pt", weights_only=True)
    assert state["pretrained"] == str(source)
    # a wrong source fails before any work, in one line
    assert main(["train", "3d_fullres", "2", "--epochs", "1", "--pretrained", str(results / "nothing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_cli_errors_are_one_clear_line(dataset, autoliver_dirs, capsys):
    assert main(["train", "3d_fulres", "0"]) == 2
    assert "Did you mean '3d_fullres'" in capsys.readouterr().err
    assert main(["train", "3d_fullres", "9", "--epochs", "1", "--iters", "1"]) == 2
    assert "FOLD must be 0 … 4 or 'all'" in capsys.readouterr().err
    assert main(["train", "3d_fullres", "0", "--recipe", "adma"]) == 2
    assert "Did you mean 'adam'" in capsys.readouterr().err
    (dataset[1] / "plans.json").unlink()
    assert main(["train", "3d_fullres", "0"]) == 2
    assert "not planned" in capsys.readouterr().err
    other = autoliver_dirs["preprocessed"] / "Dataset002_Empty"
    write_plan(other / "plans.json", make_plan(make_configuration("3d_fullres", (8, 16, 16))))
    assert main(["train", "3d_fullres", "0", "-d", "2"]) == 2
    assert "not preprocessed" in capsys.readouterr().err


@pytest.mark.slow
def test_data_parallel_with_torchrun_on_cpu(dataset):
    """Two gloo processes: the same command plus --num-gpus 2 (and --device cpu)."""
    plan, pre, results = dataset
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "autoliver", "train", "3d_fullres", "0", "--epochs", "2",
           "--iters", "2", "--device", "cpu", "-np", "0", "--num-gpus", "2", "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    fold = results / "3d_fullres" / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 2
    assert len(metrics(fold)) == 2 and (fold / "validation" / "summary.json").is_file()
