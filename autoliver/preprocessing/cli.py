"""CLI: preprocess, plan_and_preprocess."""
from __future__ import annotations

from autoliver.cli import add_command, add_dataset_arg, add_folder_args, add_progress_arg, add_workers_arg


def _report(summaries, log_hint: bool = True) -> int:
    from autoliver.preprocessing.run import LOG_NAME, overall_line
    from autoliver.progress import say

    failed = []
    for s in summaries:
        say(f"preprocess: {s.line()}")
        failed += [(s, o) for o in s.failed]
    say(f"preprocess: {overall_line(summaries)}")
    if not failed:
        say("preprocess: done; output in " + ", ".join(str(s.folder) for s in summaries))
        return 0
    say(f"preprocess: {len(failed)} case(s) failed (the others are complete):")
    for s, o in failed:
        say(f"  {s.data_identifier}/{o.case}: {o.message}")
    if log_hint:
        say(f"details in {', '.join(str(s.folder / LOG_NAME) for s in summaries if s.failed)}; "
            "fix the cases and run the same command again: it only redoes what is missing.")
    return 1


def _preprocess(info, plan, args) -> int:
    from autoliver import paths
    from autoliver.preprocessing.run import preprocess_dataset

    summaries = preprocess_dataset(info, plan, paths.root("preprocessed", args.preprocessed_dir),
                                   configurations=args.configurations, num_processes=args.num_processes,
                                   overwrite=args.overwrite)
    return _report(summaries)


def run_preprocess(args) -> int:
    from pathlib import Path

    from autoliver import paths
    from autoliver.datasets.dataset import open_dataset
    from autoliver.errors import UserError
    from autoliver.planning.plan import read_plan

    info = open_dataset(args.dataset, args.raw_dir)
    default = paths.root("preprocessed", args.preprocessed_dir) / info.name / "plans.json"
    plan_path = Path(args.plan) if args.plan else default
    if not plan_path.is_file():
        raise UserError(f"{plan_path}: no plan. Run `autoliver plan -d {args.dataset}` first, or "
                        f"`autoliver plan_and_preprocess -d {args.dataset}` for both.")
    return _preprocess(info, read_plan(plan_path), args)


def run_plan_and_preprocess(args) -> int:
    from autoliver import paths
    from autoliver.datasets.dataset import open_dataset
    from autoliver.progress import say

    info = open_dataset(args.dataset, args.raw_dir)
    preprocessed = paths.root("preprocessed", args.preprocessed_dir)
    if not args.skip_verify:
        from autoliver.datasets.verify import check_dataset

        say(f"plan_and_preprocess: verifying {info.name}")
        check_dataset(info, progress=not args.no_progress)
    from autoliver.fingerprint.api import extract_fingerprint

    say(f"plan_and_preprocess: fingerprint of {info.name}")
    extract_fingerprint(info, preprocessed, num_processes=args.num_processes, overwrite=args.overwrite)
    from autoliver.planning.api import plan_dataset

    plan = plan_dataset(info.name, preprocessed, preset=args.preset, gpu_memory_gb=args.gpu_memory_gb)
    say(f"plan_and_preprocess: plan written to {preprocessed / info.name / 'plans.json'} "
        f"({', '.join(plan.configurations)})")
    return _preprocess(info, plan, args)


def _common(p) -> None:
    add_dataset_arg(p)
    p.add_argument("-c", "--configurations", nargs="+", default=None, metavar="CONFIG",
                   help="configurations to preprocess (default: every configuration of the plan; those that share "
                        "a data_identifier are preprocessed once)")
    add_workers_arg(p)
    p.add_argument("--overwrite", action="store_true",
                   help="redo every case, and the fingerprint for plan_and_preprocess (default: keep complete "
                        "cases made with the same settings)")
    add_folder_args(p, "raw", "preprocessed")
    add_progress_arg(p)


def register(sub) -> None:
    p = add_command(sub, "preprocess",
                    help="crop, normalise, resample and store the training cases as the plan says "
                         "(parallel, resumable: a re-run only does what is missing)",
                    example="autoliver preprocess -d LiTS -c 3d_fullres 2d -np 4")
    _common(p)
    p.add_argument("--plan", default=None,
                   help="plans.json to follow (default: {preprocessed}/{dataset}/plans.json)")
    p.set_defaults(func=run_preprocess)

    p = add_command(sub, "plan_and_preprocess",
                    help="verify the dataset, extract its fingerprint, plan the configurations and preprocess",
                    example="autoliver plan_and_preprocess -d LiTS")
    _common(p)
    p.add_argument("--skip-verify", action="store_true", help="do not check the raw dataset first")
    p.add_argument("--preset", default=None,
                   help="planner preset (default: 'default' with a GPU, 'cpu' without one)")
    p.add_argument("--gpu-memory-gb", type=float, default=None,
                   help="GPU memory to plan for (default: that of the GPU present)")
    p.set_defaults(func=run_plan_and_preprocess)
