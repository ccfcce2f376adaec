"""The training loop: one plan configuration, one fold, one named recipe.

Read it top to bottom: resolve the run → data → network, optimizer, loss → resume → for each
epoch: train ``iterations_per_epoch`` batches, estimate a pseudo-Dice on validation patches, log,
plot, checkpoint → full-case validation. 2D / 3D / cascade / ConvLSTM differ only in the network
the plan names and in what the sampler reads; recipes differ only in data. There are no trainer
subclasses.

Exact resume: batches are numbered, and batch ``i`` depends only on ``(seed, rank, i)`` (see
:mod:`autoliver.training.data`); the checkpoint written after each epoch carries the network,
optimizer, gradient scaler, the Python/NumPy/torch generator states and the epoch, so
``--c`` continues as if never stopped. ``metrics.jsonl`` records a digest of every epoch's batches
to check that.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from autoliver import __version__, progress
from autoliver.errors import UserError
from autoliver.fingerprint.stats import LIVER_NAMES, TUMOUR_NAMES, find_label
from autoliver.planning.plan import Plan, write_plan
from autoliver.preprocessing import storage
from autoliver.schema import atomic_write_text, to_jsonable
from autoliver.training import distributed
from autoliver.training.checkpoint import (checkpoint_path, load_checkpoint, rng_state, save_checkpoint,
                                           set_rng_state)
from autoliver.training.data import PatchBatches, batch_loader
from autoliver.training.losses import SegmentationLoss, dice_counts, predicted_classes
from autoliver.training.networks import build_network
from autoliver.training.recipes import Recipe, recipe_to_dict
from autoliver.training.splits import fold_cases

SEED = 12345
METRICS_FILE = "metrics.jsonl"
REESTIMATE_AFTER = 2  # a budgeted run re-times its schedule after epochs 0..2 (two at the steady pace)
PLOT_EVERY_SECONDS = 30.0  # drawing progress.png takes ~0.3 s: not after every short CPU epoch


@dataclass(frozen=True)
class TrainingRun:
    """Everything the loop needs, resolved by the CLI (or a caller) beforehand."""

    plan: Plan
    configuration: str
    fold: str  # "0" … "4" or "all"
    recipe: Recipe
    preprocessed_dir: Path  # {preprocessed}/{dataset}
    results_dir: Path  # {results}/{dataset}
    device: str | None = None  # "cpu" | "cuda" | None (cuda when available)
    epochs: int | None = None  # overrides recipe.epochs
    iterations_per_epoch: int | None = None  # overrides recipe.iterations_per_epoch
    resume: bool = False
    num_workers: int | None = None  # augmentation processes (None: from the CPU count)
    validate: bool = True
    validation_only: bool = False
    save_probabilities: bool = False
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16" (see autocast_dtype)
    minutes: float | None = None  # time budget instead of a number of epochs (see epochs_for_budget)
    pretrained: str | None = None  # start from these weights (autoliver.training.pretrained); None: from scratch


def model_folder(results_dir: Path, configuration: str, recipe_name: str, plan_recipe: str = "") -> Path:
    """``{results}/{dataset}/{configuration}`` for the configuration's own recipe (the one the plan
    chose, else ``default``), ``…/{configuration}__{recipe}`` for any other."""
    own = recipe_name == (plan_recipe or "default")
    return Path(results_dir) / (configuration if own else f"{configuration}__{recipe_name}")


def fold_folder(results_dir: Path, configuration: str, recipe_name: str, fold: str, plan_recipe: str = "") -> Path:
    return model_folder(results_dir, configuration, recipe_name, plan_recipe) / f"fold_{fold}"


def default_num_workers(world_size: int = 1) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(12, cpus // world_size - 1))


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 convolutions run at about twice the float32 speed there."""
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def autocast_dtype(device: torch.device, precision: str = "auto"):
    """The dtype to autocast the forward pass to, or None for float32.

    auto: on CUDA bfloat16 (float16 with loss scaling where bfloat16 is missing), as nnU-Net trains
    with mixed precision; on a CPU float32. ``bf16`` on a CPU with native bfloat16 (AVX512-BF16,
    AMX) halves the time per iteration, but with torch 2.13 its convolution backward pass now and
    then returns non-finite weight gradients (those steps are skipped) and runs are not bitwise
    repeatable, so it is opt-in.
    """
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError("--precision fp16 needs --device cuda (CPUs train in bf16 or fp32)")
        return torch.float16
    if precision == "bf16":
        if device.type == "cpu" and not cpu_has_native_bf16():
            progress.say("--precision bf16: this CPU has no native bfloat16 (AVX512-BF16/AMX); expect it to be slower")
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def learning_rate(recipe: Recipe, epoch: int, epochs: int) -> float:
    if recipe.schedule == "constant":
        return recipe.learning_rate
    return recipe.learning_rate * (1 - epoch / epochs) ** recipe.poly_exponent


def epochs_for_budget(minutes: float, first_epoch_seconds: float, steady_epoch_seconds: float | None = None,
                      restart_seconds: float = 0.0) -> int:
    """How many epochs fit ``minutes``: the first epoch as it went (worker start-up, cuDNN's
    algorithm search and the first allocations included), then epochs at the pace its later
    iterations kept (``steady_epoch_seconds``, default: the first epoch's), after restarting the
    batch workers once (``restart_seconds``). The learning-rate schedule then spans exactly those
    epochs: a budgeted run anneals fully instead of being cut mid-schedule. Never fewer than the
    one already trained."""
    steady = first_epoch_seconds if steady_epoch_seconds is None else steady_epoch_seconds
    left = minutes * 60 - first_epoch_seconds - restart_seconds
    return max(1, 1 + math.floor(max(left, 0.0) / max(steady, 1e-6)))


def reestimated_epochs(minutes: float, epoch_seconds: list[float], epochs: int) -> int:
    """The epochs that fit ``minutes`` once a few epochs have run (``epoch_seconds``, the first
    included): the epochs done plus as many as the later epochs' pace leaves room for. One slow
    first epoch (a cold file cache, another process's burst) would otherwise fix a schedule that
    leaves a third of the budget unused, and a fast one a schedule that overruns it. Returns
    ``epochs`` itself when the difference is under two epochs and a tenth, so that a schedule is
    only stretched for a real difference; never fewer than one epoch beyond those done."""
    done = len(epoch_seconds)
    pace = float(np.mean(epoch_seconds[1:])) if done > 1 else float(epoch_seconds[0])
    # the epochs done count as one long first epoch of epochs_for_budget's arithmetic
    fit = max(done + 1, done - 1 + epochs_for_budget(minutes, float(sum(epoch_seconds)), pace))
    return fit if abs(fit - epochs) >= max(2, 0.1 * epochs) else epochs


def make_optimizer(recipe: Recipe, params) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=recipe.learning_rate, momentum=recipe.momentum, nesterov=True,
                           weight_decay=recipe.weight_decay)


def expected_in_channels(architecture: str, image_channels: int, num_classes: int, cascade: bool,
                         liver_roi: bool = False, context_slices: int = 0) -> int:
    if architecture == "convlstm_unet":
        return image_channels  # one phase per channel
    return image_channels * (2 * context_slices + 1) + (num_classes - 1 if cascade else 0) + (1 if liver_roi else 0)


def train_step(model, loss_fn, optimizer, scaler, x, y, grad_clip_norm: float, amp_dtype=None) -> tuple[torch.Tensor, bool]:
    """One optimisation step; returns (loss as float32 on the CPU, whether the weights were updated).

    ``amp_dtype``: autocast the forward pass to it. A step whose gradients are not finite is
    skipped (the loss scaler does this itself for float16), so one bad batch cannot ruin a run.
    """
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        loss = loss_fn(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    finite = bool(torch.isfinite(norm))
    if scaler.is_enabled() or finite:
        scaler.step(optimizer)
    scaler.update()
    return loss.detach().float().cpu(), finite


def read_metrics(path: Path, before_epoch: int) -> list[dict]:
    """Lines of an existing metrics file for epochs < ``before_epoch`` (a torn last line is dropped)."""
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("epoch", math.inf) < before_epoch:
                out.append(row)
    return out


def train(run: TrainingRun) -> Path:
    """Train (or resume, or only validate) one fold; returns the fold folder."""
    ctx = distributed.setup(run.device)
    try:
        return _train(run, ctx)
    finally:
        distributed.teardown(ctx)


def _train(run: TrainingRun, ctx: distributed.Context) -> Path:
    # ---- what to train on ---------------------------------------------------------------------
    plan, recipe, device = run.plan, run.recipe, ctx.device
    config = plan.configuration(run.configuration)
    spec = config.network
    folder = run.preprocessed_dir / config.data_identifier
    cases = storage.list_cases(folder)
    if not cases:
        raise UserError(f"{folder}: no preprocessed cases for configuration {config.name}. "
                        f"Run `autoliver preprocess -d {plan.dataset_name} -c {config.name}` first.")
    if ctx.is_main:
        fold_cases(run.preprocessed_dir, cases, run.fold)  # creates splits_final.json once
    distributed.barrier(ctx)
    train_cases, val_cases = fold_cases(run.preprocessed_dir, cases, run.fold)
    out = fold_folder(run.results_dir, config.name, recipe.name, run.fold, config.recipe)
    previous_stage = None
    liver_roi = config.roi_margin_mm > 0  # learns from the reference liver: needs no first-stage predictions
    if config.previous_stage and not liver_roi:
        previous_stage = (model_folder(run.results_dir, config.previous_stage, recipe.name)
                          / "predicted_next_stage" / config.name)
    image_channels = storage.open_case(folder, cases[0]).image.shape[0]
    want = expected_in_channels(spec.architecture, image_channels, spec.num_classes, bool(previous_stage), liver_roi,
                                config.context_slices)
    if spec.in_channels != want:
        extra = " + one-hot previous stage" if previous_stage else " + liver mask" if liver_roi else ""
        if config.context_slices:
            extra = f" × {2 * config.context_slices + 1} slices{extra}"
        raise UserError(f"plan {config.name}: network.in_channels must be {want} (image channels {image_channels}"
                        f"{extra}), got {spec.in_channels}. Re-plan.")

    # ---- resume or start ------------------------------------------------------------------------
    latest, final = checkpoint_path(out, "latest"), checkpoint_path(out, "final")
    state = None
    if run.validation_only:
        state = load_checkpoint(final, device)
    elif run.resume and latest.is_file():
        state = load_checkpoint(latest, device)
        if state["recipe"]["name"] != recipe.name or state["configuration"] != config.name:
            raise UserError(f"{latest}: was trained with recipe {state['recipe']['name']!r}, configuration "
                            f"{state['configuration']!r}; cannot continue it as {recipe.name!r}, {config.name!r}.")
    elif latest.is_file() or final.is_file():
        raise UserError(f"{out}: this fold has checkpoints already. Add --c to continue it, or delete the folder "
                        "to start over.")
    elif run.resume and ctx.is_main:
        progress.say(f"{out}: no checkpoint to continue from; starting a new training.")

    if run.minutes is not None and (run.minutes <= 0 or run.epochs is not None):
        raise UserError(f"--minutes must be > 0 and cannot be combined with --epochs, got {run.minutes} "
                        f"(--epochs {run.epochs})")
    # With a time budget the first epoch is a calibration: its learning rate does not depend on the
    # number of epochs, which is fixed (and checkpointed) once it has been timed.
    budgeted = run.minutes is not None and state is None and not run.validation_only
    epochs = 1 if budgeted else run.epochs or (state["epochs"] if state else recipe.epochs)
    iterations = run.iterations_per_epoch or (state["iterations_per_epoch"] if state else recipe.iterations_per_epoch)
    start_epoch = state["epoch"] if state else 0
    if epochs < 1 or iterations < 1:
        raise UserError(f"--epochs and --iters must be >= 1, got {epochs} and {iterations}")

    torch.manual_seed(SEED + ctx.rank)
    np.random.seed(SEED + ctx.rank)
    network = build_network(spec, region=recipe.region).to(device)
    optimizer = make_optimizer(recipe, network.parameters())
    amp_dtype = autocast_dtype(device, run.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    loss_fn = SegmentationLoss(recipe.loss, recipe.region)
    ema = best = None
    if state:
        network.load_state_dict(state["network"])
        if not run.validation_only:
            optimizer.load_state_dict(state["optimizer"])
            if state.get("grad_scaler"):
                scaler.load_state_dict(state["grad_scaler"])
            set_rng_state(state["rng"])
        ema, best = state.get("ema_pseudo_dice"), state.get("best_ema_pseudo_dice")
    elif run.pretrained:
        from autoliver.training.pretrained import load_pretrained

        transfer = load_pretrained(network, run.pretrained)
        if ctx.is_main:
            progress.say(transfer.describe())
    model = network
    if ctx.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def checkpoint(epoch_done: int) -> dict:
        return {"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                "grad_scaler": scaler.state_dict(), "plan": to_jsonable(plan), "configuration": config.name,
                "recipe": recipe_to_dict(recipe), "fold": str(run.fold), "epoch": epoch_done, "epochs": epochs,
                "iterations_per_epoch": iterations, "rng": rng_state(), "ema_pseudo_dice": ema,
                "best_ema_pseudo_dice": best, "autoliver_version": __version__, "world_size": ctx.world_size,
                "pretrained": str(run.pretrained or (state or {}).get("pretrained") or ""),
                "precision": str(amp_dtype or torch.float32).replace("torch.", "")}

    # ---- data ---------------------------------------------------------------------------------
    batch_size = max(1, config.batch_size // ctx.world_size)
    workers = run.num_workers if run.num_workers is not None else default_num_workers(ctx.world_size)
    sampler = dict(batch_size=batch_size, num_classes=spec.num_classes, rank=ctx.rank, previous_stage=previous_stage,
                   oversample_foreground=recipe.oversample_foreground, oversample_lesions=recipe.oversample_lesions,
                   liver_channel=liver_roi, context_slices=config.context_slices,
                   tumour_label=find_label(plan.labels, TUMOUR_NAMES),
                   liver_label=find_label(plan.labels, LIVER_NAMES), spacing_zyx=config.spacing_zyx_mm)
    train_data = PatchBatches(folder, train_cases, config.patch_size, augmentation=recipe.augmentation, seed=SEED,
                              **sampler)
    val_data = PatchBatches(folder, val_cases, config.patch_size, augmentation=None, seed=SEED + 1, **sampler)
    labels = [name for name, v in sorted(plan.labels.items(), key=lambda kv: kv[1]) if v > 0]

    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_plan(out.parent / "plans.json", plan)
    metrics_path = out / METRICS_FILE
    history = read_metrics(metrics_path, start_epoch) if ctx.is_main else []
    if ctx.is_main and not run.validation_only:
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in history))
        progress.say(f"training {plan.dataset_name} {config.name} fold {run.fold} with recipe {recipe.name}: "
                     f"{len(train_cases)} training / {len(val_cases)} validation cases, patch {list(config.patch_size)}, "
                     f"batch {batch_size}×{ctx.world_size}, "
                     + (f"as many epochs as fit {run.minutes:g} min" if budgeted else f"epochs {start_epoch}→{epochs}")
                     + f" × {iterations} iterations, "
                     f"{device} ({str(amp_dtype or torch.float32).replace('torch.', '')}), {workers} augmentation workers")

    # ---- the loop -----------------------------------------------------------------------------
    def batches(first_epoch: int):
        return iter(batch_loader(train_data, first_epoch * iterations, epochs * iterations, workers,
                                 pin_memory=device.type == "cuda"))

    loader = batches(start_epoch) if start_epoch < epochs and not run.validation_only else None
    bar = None
    if loader is not None:
        bar = (progress.bar(total=(epochs - start_epoch) * iterations, desc=f"{config.name} fold {run.fold}", unit="it")
               if ctx.is_main else tqdm(disable=True))
    last_plot = -math.inf
    timed = []  # this process's epoch seconds (a budgeted run re-times its schedule from them)
    epoch = start_epoch
    while loader is not None and epoch < epochs:
        lr = learning_rate(recipe, epoch, epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        t0 = time.perf_counter()
        train_loss, digest, skipped = torch.zeros((), dtype=torch.float64), hashlib.blake2b(digest_size=8), 0
        warm_up = max(1, iterations // 4)  # iterations of epoch 0 that pay for start-up, not the pace
        for it in range(iterations):
            if it == warm_up:
                t_warm = time.perf_counter()
            batch = next(loader)
            if it == 0:
                first_batch_seconds = time.perf_counter() - t0
            digest.update(batch["digest"])
            x = batch["data"].to(device, non_blocking=True)
            y = batch["target"].to(device, non_blocking=True)
            value, stepped = train_step(model, loss_fn, optimizer, scaler, x, y, recipe.grad_clip_norm, amp_dtype)
            skipped += not stepped
            train_loss += value
            bar.set_postfix_str(f"epoch {epoch + 1}/{epochs} loss {value.item():.4f}", refresh=False)
            bar.update(1)
        train_seconds = time.perf_counter() - t0

        # pseudo-Dice on validation patches: cheap, noisy, good enough to pick checkpoint_best
        model.eval()
        counts = torch.zeros((len(labels), 3), dtype=torch.float64)
        val_loss = torch.zeros((), dtype=torch.float64)
        val_batches = max(1, round(recipe.validation_fraction * iterations))
        with torch.no_grad():
            for i in range(val_batches):
                batch = val_data[epoch * val_batches + i]
                x, y = batch["data"].to(device), batch["target"].to(device)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    logits = network.network(x) if recipe.region else network(x)
                val_loss += loss_fn(logits, y).float().cpu()
                counts += dice_counts(predicted_classes(logits.float(), recipe.region), y, spec.num_classes).cpu()
        counts = distributed.all_sum(ctx, counts)
        losses = distributed.all_sum(ctx, torch.stack([train_loss / iterations, val_loss / val_batches]))
        losses = losses / ctx.world_size
        tp, fp, fn = counts.unbind(1)
        # a class absent from the patches and never predicted has no Dice (null), not a Dice of 0
        pseudo_dice = [None if math.isnan(v) else float(v) for v in (2 * tp / (2 * tp + fp + fn)).tolist()]
        defined = [v for v in pseudo_dice if v is not None]
        mean_dice = float(np.mean(defined)) if defined else 0.0
        ema = mean_dice if ema is None else recipe.ema_pseudo_dice * ema + (1 - recipe.ema_pseudo_dice) * mean_dice
        improved = best is None or ema > best
        best = ema if improved else best
        epoch_seconds = time.perf_counter() - t0
        timed.append(epoch_seconds)
        if budgeted and epoch == 0:
            steady = epoch_seconds
            if iterations > warm_up:
                steady = (t0 + train_seconds - t_warm) / (iterations - warm_up) * iterations + epoch_seconds - train_seconds
            epochs = int(distributed.all_min(ctx, torch.tensor(
                epochs_for_budget(run.minutes, epoch_seconds, steady, first_batch_seconds))))
            bar.total = epochs * iterations
            bar.refresh()
            if ctx.is_main:
                tqdm.write(f"first epoch {epoch_seconds:.1f} s, then {steady:.1f} s per epoch here → {epochs} epochs × "
                           f"{iterations} iterations fit {run.minutes:g} min", file=sys.stderr)
            if epochs > 1:
                loader = batches(1)  # the same numbered batches an unbudgeted run of this length gets
        elif budgeted and epoch == REESTIMATE_AFTER and epoch + 1 < epochs:
            new = int(distributed.all_min(ctx, torch.tensor(reestimated_epochs(run.minutes, timed, epochs))))
            if new != epochs:
                if ctx.is_main:
                    tqdm.write(f"after {epoch + 1} epochs ({sum(timed):.0f} s): {new} epochs fit {run.minutes:g} min, "
                               f"not {epochs}; the schedule is re-timed to them", file=sys.stderr)
                epochs = new
                bar.total = epochs * iterations
                bar.refresh()
                loader = batches(epoch + 1)

        if ctx.is_main:
            payload = checkpoint(epoch + 1)
            save_checkpoint(latest, payload)
            if improved:
                save_checkpoint(checkpoint_path(out, "best"), payload)
            row = {"epoch": epoch, "train_loss": float(losses[0]), "val_loss": float(losses[1]),
                   "pseudo_dice": dict(zip(labels, pseudo_dice)), "ema_pseudo_dice": ema, "learning_rate": lr,
                   "train_seconds": train_seconds, "epoch_seconds": epoch_seconds,
                   "seconds_per_iteration": train_seconds / iterations, "skipped_steps": skipped,
                   "batch_digest": digest.hexdigest(),
                   "time": time.time()}
            history.append(row)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if epoch + 1 == epochs or time.perf_counter() - last_plot >= PLOT_EVERY_SECONDS:
                plot_progress(history, out / "progress.png")
                last_plot = time.perf_counter()
            tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.4f} (val {row['val_loss']:.4f}), "
                       "pseudo-Dice " + ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}"
                                                  for k, v in row["pseudo_dice"].items())
                       + f", EMA {ema:.3f}{' (best)' if improved else ''}, {epoch_seconds:.1f} s"
                       + (f", {skipped} steps skipped (non-finite gradients)" if skipped else ""), file=sys.stderr)
        distributed.barrier(ctx)
        epoch += 1
    if bar is not None:
        bar.close()
    if loader is not None or (state and not final.is_file() and not run.validation_only):
        if ctx.is_main:
            save_checkpoint(final, checkpoint(epochs))
        distributed.barrier(ctx)

    # ---- full-case validation -------------------------------------------------------------------
    if run.validate and (run.validation_only or not (out / "validation" / "summary.json").is_file()):
        run_validation(run, ctx, network, plan, config, folder, val_cases, out, previous_stage)
    return out


def first_stage_validation(results_dir: Path, first: str, fold: str) -> Path | None:
    """The folder of a first stage's validation predictions of ``fold`` on the original grid
    (``{first}/fold_{fold}/validation``, any recipe of ``first``), or None."""
    candidates = [Path(results_dir) / first] + sorted(Path(results_dir).glob(f"{first}__*"))
    for c in candidates:
        folder = c / f"fold_{fold}" / "validation"
        if (folder / "summary.json").is_file():
            return folder
    return None


def run_validation(run: TrainingRun, ctx, network, plan, config, folder, val_cases, out, previous_stage) -> None:
    from autoliver.training.validation import validate, write_summary

    next_stages = {}
    for name, other in plan.configurations.items():
        if other.previous_stage == config.name and other.roi_margin_mm <= 0:
            next_stages[name] = (run.preprocessed_dir / other.data_identifier,
                                 model_folder(run.results_dir, config.name, run.recipe.name) / "predicted_next_stage" / name)
    first_stage = None
    if config.roi_margin_mm > 0:  # the first stage's validation of the same fold, where it exists
        first_stage = first_stage_validation(run.results_dir, config.previous_stage, run.fold)
    mine = val_cases[ctx.rank::ctx.world_size]
    entries = validate(network, plan, config, folder, mine, out / "validation", device=ctx.device,
                       previous_stage=previous_stage, next_stages=next_stages, first_stage=first_stage,
                       save_probabilities=run.save_probabilities, show_progress=ctx.is_main and progress.enabled())
    everything = [e for part in distributed.gather_objects(ctx, entries) for e in part]
    if ctx.is_main:
        summary = write_summary(out / "validation", everything, plan.labels,
                                {"configuration": config.name, "fold": str(run.fold), "recipe": run.recipe.name,
                                 "checkpoint": "final", "mirroring": ctx.device.type == "cuda",
                                 "grid": "preprocessed", "cases": len(everything)})
        means = ", ".join(f"{k} {v['dice_region']:.4f}" for k, v in summary["mean"].items() if v["dice_region"] is not None)
        progress.say(f"validation ({len(everything)} cases): mean Dice (label and above) {means}; "
                     f"written to {out / 'validation' / 'summary.json'}")
    distributed.barrier(ctx)


def plot_progress(history: list[dict], path: Path) -> None:
    """progress.png: losses, pseudo-Dice (+ EMA), learning rate, epoch time; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(4, 1, figsize=(10, 13), sharex=True)
    axes[0].plot(epochs, [r["train_loss"] for r in history], label="train loss")
    axes[0].plot(epochs, [r["val_loss"] for r in history], label="validation loss")
    for name in history[-1]["pseudo_dice"]:
        values = [r["pseudo_dice"].get(name) for r in history]
        axes[1].plot(epochs, [np.nan if v is None else v for v in values], ":", label=f"pseudo-Dice {name}")
    axes[1].plot(epochs, [r["ema_pseudo_dice"] for r in history], label="mean pseudo-Dice (EMA)")
    axes[2].plot(epochs, [r["learning_rate"] for r in history], label="learning rate")
    axes[3].plot(epochs, [r["epoch_seconds"] for r in history], label="epoch time (s)")
    for ax in axes:
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    fig.subplots_adjust(left=0.08, right=0.98, top=0.98, bottom=0.05, hspace=0.08)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=80)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
