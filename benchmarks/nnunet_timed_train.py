"""Train nnU-Net v2 for a fixed wall-clock budget on the CPU (for bench_accuracy.py).

Run with the Python of an environment where nnU-Net v2 is installed (never autoliver's own: see
ANCHORS.md), with nnUNet_raw, nnUNet_preprocessed and nnUNet_results set, after nnU-Net's
preprocessing of the dataset with the given plans:

    nnUNet_n_proc_DA=1 NNUNET_PYTHON nnunet_timed_train.py -d 990 -c 3d_fullres -f all \\
        -p nnUNetPlans --minutes 30 --iterations 50 --val-iterations 2 -o timing.json

It runs nnU-Net's own ``nnUNetTrainer`` (network, loss with deep supervision, SGD with Nesterov
momentum, poly learning rate from 1e-2, augmentation pipeline, data loader with foreground
oversampling, its multi-threaded augmenter with ``nnUNet_n_proc_DA`` workers) on device cpu, with
three changes forced by the CPU:

* ``--iterations`` training iterations per epoch instead of 250 and ``--val-iterations`` (pseudo
  Dice on training patches, fold ``all`` has no held-out cases) instead of 50;
* the number of epochs is chosen from the measured duration of the first epoch so that the poly
  schedule (last epoch: 1e-2·(1/epochs)^0.9, as in nnU-Net) ends at the deadline (``minutes`` after the start of this script, set-up and
  data loader start included), then re-estimated after each epoch from the median epoch: lowered
  whenever the plan no longer fits, raised only during its first quarter (a slow first epoch);
  the poly schedule follows the new number of epochs; training stops at the deadline regardless,
  mid-epoch if need be (no validation after it);
* when fewer than ``--min-epochs`` epochs of ``--iterations`` iterations would fit in the budget
  (measured on the second iteration), the iterations per epoch are lowered so that they do, so
  that the learning rate anneals even when one iteration takes many seconds.

It writes only ``checkpoint_final.pth`` (no checkpoint_best/latest: saving them costs time and
fold ``all`` has no validation worth selecting on) in nnU-Net's usual results folder
``nnUNet_results/DatasetNNN_Name/nnUNetTrainer__PLANS__CONFIGURATION/fold_FOLD``, so that
``nnUNetv2_predict -tr nnUNetTrainer -p PLANS -c CONFIGURATION -f FOLD`` uses it, and skips
nnU-Net's final full validation. The JSON at ``-o`` holds epochs, iterations per epoch, wall
seconds and seconds per iteration (median of whole iterations, waiting for the augmenter included;
``compute_seconds_per_iteration``: nnU-Net's train_step alone).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, help="dataset id (990) or name (Dataset990_Smoke)")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-f", "--fold", default="all", help="fold number or 'all'")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("--minutes", type=float, required=True, help="wall-clock budget of the training")
    p.add_argument("--iterations", type=int, default=50, help="training iterations per epoch (at most)")
    p.add_argument("--val-iterations", type=int, default=2,
                   help="validation iterations per epoch (pseudo Dice on training patches; nnU-Net: 50)")
    p.add_argument("--min-epochs", type=int, default=10,
                   help="lower the iterations per epoch so that at least this many epochs fit the budget")
    p.add_argument("-o", "--output", required=True, help="JSON with the timing of the training")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the CPU count, as nnUNetv2_train -device cpu)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    budget_s = args.minutes * 60.0
    deadline = t0 + budget_s

    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    torch.set_num_threads(args.threads or multiprocessing.cpu_count())
    fold = args.fold if args.fold == "all" else int(args.fold)
    trainer = get_trainer_from_args(str(args.dataset), args.configuration, fold, "nnUNetTrainer", args.plans,
                                    False, device=torch.device("cpu"))
    iterations = max(1, args.iterations)
    val_iterations = max(1, min(args.val_iterations, iterations))
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = val_iterations
    trainer.num_epochs = 1000  # placeholder until the first epoch is measured (its learning rate is 1e-2 anyway)
    trainer.save_every = 10 ** 9
    save = trainer.save_checkpoint
    trainer.save_checkpoint = lambda filename: save(filename) if Path(filename).name == "checkpoint_final.pth" else None

    trainer.on_train_start()  # network, optimiser, data loaders (their workers start here), unpacking
    t_loop = time.perf_counter()
    print(f"nnunet_timed_train: set-up {t_loop - t0:.1f} s; budget {budget_s:.0f} s; "
          f"batch {trainer.batch_size}, patch {list(trainer.configuration_manager.patch_size)}", flush=True)

    step_seconds: list[float] = []  # a whole iteration: waiting for the augmenter, then train_step
    compute_seconds: list[float] = []  # train_step alone (forward, backward, SGD step)
    epoch_seconds: list[float] = []
    planned_epochs = None
    stopped_at_deadline = False
    epoch = 0
    while planned_epochs is None or epoch < planned_epochs:
        t_epoch = time.perf_counter()
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        outputs = []
        i = 0
        while i < trainer.num_iterations_per_epoch:
            if time.perf_counter() >= deadline:
                stopped_at_deadline = True
                break
            t = time.perf_counter()
            batch = next(trainer.dataloader_train)
            t_batch = time.perf_counter()
            outputs.append(trainer.train_step(batch))
            t_done = time.perf_counter()
            step_seconds.append(t_done - t)
            compute_seconds.append(t_done - t_batch)
            i += 1
            if epoch == 0 and i == 2 and trainer.num_iterations_per_epoch > 2:
                # the second iteration (the first carries warm-up); validation ≈ a third of a training step
                per_it = step_seconds[1]
                left = deadline - t_loop
                per_epoch = per_it * (trainer.num_iterations_per_epoch + val_iterations / 3)
                if left / per_epoch < args.min_epochs:
                    fit = int(left / (args.min_epochs * per_it) - val_iterations / 3)
                    trainer.num_iterations_per_epoch = max(2, min(trainer.num_iterations_per_epoch, fit))
                    print(f"nnunet_timed_train: {per_it:.2f} s per iteration, so "
                          f"{trainer.num_iterations_per_epoch} iterations per epoch for {args.min_epochs} epochs",
                          flush=True)
        if outputs:
            trainer.on_train_epoch_end(outputs)
        if time.perf_counter() >= deadline:  # no validation after the deadline
            stopped_at_deadline = True
        if stopped_at_deadline:
            if outputs:
                trainer.current_epoch += 1  # a partial epoch counts; no validation after the deadline
                epoch += 1
            break
        with torch.no_grad():
            trainer.on_validation_epoch_start()
            val_outputs = [trainer.validation_step(next(trainer.dataloader_val)) for _ in range(val_iterations)]
            trainer.on_validation_epoch_end(val_outputs)
        trainer.on_epoch_end()
        epoch += 1
        now = time.perf_counter()
        epoch_seconds.append(now - t_epoch)
        if planned_epochs is None:
            planned_epochs = max(1, 1 + math.floor((deadline - now) / epoch_seconds[0]))
        elif epoch < planned_epochs:
            typical = statistics.median(epoch_seconds[1:])
            fits = epoch + max(0, math.floor((deadline - now) / typical))
            # shrink whenever the plan no longer fits; grow only in its first quarter (the first epoch
            # can be slow: warm-up, a busy machine), while the learning rate is still near its start
            if fits < planned_epochs or (fits > planned_epochs and epoch * 4 <= planned_epochs):
                planned_epochs = max(epoch, fits)
        trainer.num_epochs = planned_epochs
        trainer.lr_scheduler.max_steps = planned_epochs
        print(f"nnunet_timed_train: epoch {epoch}/{planned_epochs} in {epoch_seconds[-1]:.1f} s, "
              f"loss {trainer.logger.get_value('train_losses', step=-1):.4f}, "
              f"{deadline - now:.0f} s left", flush=True)

    train_end = time.perf_counter()
    trainer.on_train_end()  # writes checkpoint_final.pth, stops the data loader workers
    t_end = time.perf_counter()
    result = {
        "epochs": epoch,
        "planned_epochs": planned_epochs if planned_epochs is not None else epoch,
        "stopped_at_deadline": stopped_at_deadline,
        "iterations_per_epoch": trainer.num_iterations_per_epoch,
        "requested_iterations_per_epoch": iterations,
        "val_iterations_per_epoch": val_iterations,
        "iterations": len(step_seconds),
        "budget_seconds": budget_s,
        "setup_seconds": t_loop - t0,
        "train_seconds": t_end - t0,
        "loop_seconds": train_end - t_loop,
        "seconds_per_iteration": statistics.median(step_seconds) if step_seconds else None,
        "mean_seconds_per_iteration": statistics.mean(step_seconds) if step_seconds else None,
        "compute_seconds_per_iteration": statistics.median(compute_seconds) if compute_seconds else None,
        "data_wait_seconds": sum(step_seconds) - sum(compute_seconds),
        "epoch_seconds": [round(v, 2) for v in epoch_seconds],
        "first_epoch_seconds": epoch_seconds[0] if epoch_seconds else None,
        "final_learning_rate": trainer.optimizer.param_groups[0]["lr"],
        "batch_size": trainer.batch_size,
        "patch_size": [int(v) for v in trainer.configuration_manager.patch_size],
        "torch_threads": torch.get_num_threads(),
        "data_augmentation_workers": int(os.environ.get("nnUNet_n_proc_DA", "-1")),
        "checkpoint": str(Path(trainer.output_folder) / "checkpoint_final.pth"),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(f"nnunet_timed_train: {epoch} epochs × {trainer.num_iterations_per_epoch} iterations in "
          f"{result['train_seconds']:.0f} s, {result['seconds_per_iteration']:.2f} s per iteration", flush=True)
    return result


if __name__ == "__main__":
    import sys
    import traceback

    try:
        main()
        code = 0
    except BaseException:  # noqa: BLE001 - report, then leave without waiting for the augmenter's threads
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the augmenter's worker threads can keep the interpreter alive after training
