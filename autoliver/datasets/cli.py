"""CLI: convert_lits, convert_msd, verify_dataset."""
from __future__ import annotations

from pathlib import Path

from autoliver.cli import add_command, add_dataset_arg, add_folder_args, add_progress_arg


def _target(args) -> Path:
    from autoliver import paths

    return paths.root("raw", args.raw_dir) / paths.dataset_folder_name(args.dataset_id, args.name)


def _run_convert(args, fn) -> int:
    from autoliver.progress import say

    out = fn(Path(args.source), _target(args), overwrite=args.overwrite, progress=not args.no_progress)
    say(f"wrote {out}")
    say(f"next: autoliver plan_and_preprocess -d {args.dataset_id}")
    return 0


def run_convert_lits(args) -> int:
    from autoliver.datasets.convert import convert_lits

    return _run_convert(args, convert_lits)


def run_convert_msd(args) -> int:
    from autoliver.datasets.convert import convert_msd

    return _run_convert(args, convert_msd)


def run_verify(args) -> int:
    from autoliver.datasets.dataset import open_dataset
    from autoliver.datasets.verify import verify_dataset

    info = open_dataset(args.dataset, args.raw_dir)
    problems = verify_dataset(info, progress=not args.no_progress)
    for line in problems:
        print(line)
    if problems:
        print(f"{info.name}: {len(problems)} problem(s) found")
        return 1
    print(f"{info.name}: {info.num_training} cases, no problems found")
    return 0


def register(sub) -> None:
    for name, fn, what, example in (
        ("convert_lits", run_convert_lits, "the original LiTS release (volume-N.nii, segmentation-N.nii)",
         "autoliver convert_lits ~/data/LITS17"),
        ("convert_msd", run_convert_msd, "MSD Task03_Liver", "autoliver convert_msd ~/data/Task03_Liver"),
    ):
        p = add_command(sub, name, help=f"convert {what} to a raw autoliver dataset", example=example)
        p.add_argument("source", help="folder of the downloaded dataset")
        p.add_argument("--dataset-id", type=int, default=3, help="id of the new dataset")
        p.add_argument("--name", default="LiTS", help="name of the new dataset")
        p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that id and name")
        add_folder_args(p, "raw")
        add_progress_arg(p)
        p.set_defaults(func=fn)

    p = add_command(sub, "verify_dataset", help="check a raw dataset and list every problem",
                    example="autoliver verify_dataset -d LiTS")
    add_dataset_arg(p)
    add_folder_args(p, "raw")
    add_progress_arg(p)
    p.set_defaults(func=run_verify)
