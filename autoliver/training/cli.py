"""``autoliver train CONFIG FOLD``: train one configuration of the plan on one cross-validation fold.

nnU-Net's habits are accepted where they mean the same: its positional order
``train DATASET CONFIG FOLD``, ``-device``, ``-num_gpus``, ``-tr nnUNetTrainer`` (the default recipe;
``nnUNetTrainer_250epochs`` and the like set the epochs) and ``-p nnUNetPlans`` (the dataset's one plan).
"""
from __future__ import annotations

import argparse
import os
import re

from autoliver.errors import UserError

from autoliver.cli import add_command, add_dataset_arg, add_folder_args, add_progress_arg


def register(subparsers) -> None:
    from autoliver.training.recipes import RECIPES

    p = add_command(
        subparsers, "train", help="train one configuration on one fold (resumable with --c)",
        example="autoliver train 3d_fullres 0 -d LiTS\n  autoliver train 3d_fullres 0 --epochs 50 --iters 50 --device cpu"
                "\n  autoliver train 3d_fullres 0 --minutes 20 --iters 50   # as many epochs as fit 20 minutes"
                "\n  autoliver train 3d_fullres 0 --c            # continue after an interruption"
                "\n  autoliver train LiTS 3d_fullres 0 -tr nnUNetTrainer_250epochs   # nnU-Net's order and names",
        description="Train one configuration of the dataset's plan on one fold (0-4, or 'all' for every case). "
                    "Results go to {results}/{dataset}/{configuration}/fold_{FOLD} (non-default recipes: "
                    "{configuration}__{recipe}): checkpoints, metrics.jsonl, progress.png, validation/summary.json.")
    p.add_argument("configuration", metavar="CONFIG",
                   help="a configuration of the plan: 2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres, 3d_convlstm")
    p.add_argument("fold", metavar="FOLD", help="cross-validation fold: 0, 1, 2, 3, 4 or all")
    # nnU-Net's order, DATASET CONFIG FOLD: a third word shifts the other two (see the example).
    p.add_argument("nnunet_fold", nargs="?", default=None, help=argparse.SUPPRESS)
    add_dataset_arg(p, required=False)
    add_folder_args(p, "preprocessed", "results")
    p.add_argument("--recipe", default=None,
                   help="training recipe (default: the one the plan chose for the configuration, else default): " + "; ".join(f"{k} ({r.description})" for k, r in RECIPES.items()))
    p.add_argument("--device", "-device", choices=("cpu", "cuda"), default=None,
                   help="where to train (default: cuda if available)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: mixed precision on CUDA (bf16, else fp16), fp32 on a CPU; bf16 on a CPU with "
                        "native bf16 (AVX512-BF16/AMX) is about twice as fast but not bitwise repeatable")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (default: the recipe's)")
    p.add_argument("--iters", type=int, default=None, help="iterations per epoch (default: the recipe's)")
    p.add_argument("--minutes", type=float, default=None,
                   help="train for about this long instead of a number of epochs: the first epoch is timed, then "
                        "the epochs that fit are fixed and the learning-rate schedule spans them (the full-case "
                        "validation at the end comes on top)")
    p.add_argument("--c", dest="resume", action="store_true",
                   help="continue from checkpoint_latest.pt exactly (network, optimizer, RNG states, epoch)")
    p.add_argument("--num-gpus", "-num_gpus", type=int, default=1,
                   help="data-parallel processes (torchrun + DDP), one per GPU; with --device cpu, CPU processes")
    p.add_argument("-np", "--num-processes", type=int, default=None,
                   help="background augmentation processes per GPU/process (default: CPU cores − 1, at most 12)")
    p.add_argument("--val", dest="validation_only", action="store_true",
                   help="only run the full-case validation of checkpoint_final.pt")
    p.add_argument("--npz", dest="save_probabilities", action="store_true",
                   help="also save validation probabilities (.npz) for ensembling")
    p.set_defaults(validate=True)  # before the flag, so --help does not call "skip" a default
    p.add_argument("--no-validation", dest="validate", action="store_false", default=argparse.SUPPRESS,
                   help="skip the full-case validation at the end")
    p.add_argument("--pretrained", "-pretrained_weights", dest="pretrained", default=None, metavar="SOURCE",
                   help="start from another model's weights: a checkpoint file, a model or fold folder, or 'builtin' "
                        "(the shipped starter model); tensors whose name and shape match are copied, the rest "
                        "start fresh (reported)")
    p.add_argument("-tr", dest="nnunet_trainer", default=None, metavar="TRAINER",
                   help="nnU-Net's trainer name: nnUNetTrainer (the default recipe) or nnUNetTrainer_<N>epochs "
                        "(--epochs N); use --recipe for autoliver's other recipes")
    p.add_argument("-p", dest="nnunet_plans", default=None, metavar="PLANS",
                   help="nnU-Net's plans name: only nnUNetPlans, the dataset's one plan (presets are chosen "
                        "when planning: autoliver plan --preset)")
    add_progress_arg(p)
    p.set_defaults(func=run_train)


NNUNET_TRAINER_RE = re.compile(r"^nnUNetTrainer(?:_(\d+)epochs)?$")


def resolve_nnunet_habits(args) -> None:
    """nnU-Net's spellings to autoliver's: dataset, configuration, fold and epochs (in place)."""
    if args.nnunet_fold is not None:
        if args.dataset is not None and args.dataset != args.configuration:
            raise UserError(f"train: the dataset is given twice, {args.configuration!r} (first word) and "
                            f"-d {args.dataset}; give it once")
        args.dataset, args.configuration, args.fold = args.configuration, args.fold, args.nnunet_fold
        args.nnunet_fold = None
    if args.nnunet_trainer is not None:
        m = NNUNET_TRAINER_RE.match(args.nnunet_trainer)
        if not m:
            raise UserError(f"-tr {args.nnunet_trainer}: autoliver maps nnUNetTrainer and nnUNetTrainer_<N>epochs; "
                            "other trainers are recipes here: pass --recipe NAME (see autoliver train --help)")
        if m.group(1):
            if args.epochs is not None and args.epochs != int(m.group(1)):
                raise UserError(f"-tr {args.nnunet_trainer} and --epochs {args.epochs} disagree; give one")
            args.epochs = int(m.group(1))
    if args.nnunet_plans is not None and args.nnunet_plans != "nnUNetPlans":
        raise UserError(f"-p {args.nnunet_plans}: autoliver keeps one plan per dataset (plans.json), named "
                        "nnUNetPlans in nnU-Net's terms; choose a preset when planning instead "
                        "(autoliver plan --preset default|lowmem|cpu|FILE.json)")


def _relaunch_argv(args) -> list[str]:
    argv = ["train", args.configuration, str(args.fold)] + (["--recipe", args.recipe] if args.recipe else [])
    for flag, value in (("-d", args.dataset), ("--preprocessed-dir", args.preprocessed_dir),
                        ("--results-dir", args.results_dir), ("--device", args.device), ("--precision", args.precision),
                        ("--epochs", args.epochs), ("--minutes", args.minutes),
                        ("--iters", args.iters), ("-np", args.num_processes), ("--pretrained", args.pretrained)):
        if value is not None:
            argv += [flag, str(value)]
    for flag, on in (("--c", args.resume), ("--val", args.validation_only), ("--npz", args.save_probabilities),
                     ("--no-validation", not args.validate), ("--no-progress", args.no_progress), ("--debug", args.debug)):
        if on:
            argv.append(flag)
    return argv


def run_train(args) -> int:
    from autoliver.paths import resolve_dataset, root
    from autoliver.planning.plan import read_plan
    from autoliver.preprocessing import storage
    from autoliver.training.recipes import get_recipe

    resolve_nnunet_habits(args)
    if args.num_gpus > 1 and "WORLD_SIZE" not in os.environ:
        from autoliver.training.distributed import relaunch

        return relaunch(_relaunch_argv(args), args.num_gpus)
    preprocessed, results = root("preprocessed", args.preprocessed_dir), root("results", args.results_dir)
    dataset = resolve_dataset(args.dataset, preprocessed)
    plan_file = preprocessed / dataset / "plans.json"
    if not plan_file.is_file():
        raise UserError(f"{dataset}: not planned ({plan_file} is missing). Run `autoliver plan_and_preprocess -d {dataset}`.")
    plan = read_plan(plan_file)
    config = plan.configuration(args.configuration)
    data_folder = preprocessed / dataset / config.data_identifier
    if not storage.list_cases(data_folder):
        raise UserError(f"{dataset} {config.name}: not preprocessed ({data_folder} has no cases). "
                        f"Run `autoliver preprocess -d {dataset} -c {config.name}`.")
    recipe = get_recipe(args.recipe or config.recipe or "default")
    if args.pretrained:  # a wrong path fails now, not after the data is loaded
        from autoliver.training.pretrained import resolve_source

        resolve_source(args.pretrained)
    if args.epochs is not None and args.epochs < 1 or args.iters is not None and args.iters < 1:
        raise UserError(f"--epochs and --iters must be >= 1, got {args.epochs} and {args.iters}")
    if args.num_processes is not None and args.num_processes < 0:
        raise UserError(f"-np must be >= 0, got {args.num_processes}")

    from autoliver.training.trainer import TrainingRun, train

    train(TrainingRun(plan=plan, configuration=config.name, fold=str(args.fold), recipe=recipe,
                      preprocessed_dir=preprocessed / dataset, results_dir=results / dataset, device=args.device,
                      epochs=args.epochs, minutes=args.minutes, iterations_per_epoch=args.iters, resume=args.resume,
                      num_workers=args.num_processes, validate=args.validate, validation_only=args.validation_only,
                      save_probabilities=args.save_probabilities, precision=args.precision,
                      pretrained=args.pretrained))
    return 0
