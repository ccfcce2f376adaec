"""CLI: plan."""
from __future__ import annotations

from autoliver.cli import add_command, add_dataset_arg, add_folder_args, add_progress_arg, add_workers_arg


def run_plan(args) -> int:
    from autoliver import paths
    from autoliver.planning.api import PLANS_FILE, plan_dataset
    from autoliver.planning.report import plan_table
    from autoliver.progress import say

    pre = paths.root("preprocessed", args.preprocessed_dir)
    raw = paths.root("raw", args.raw_dir)
    name = paths.resolve_dataset(args.dataset, raw, pre)
    if args.plans_from:
        from autoliver.planning.api import plan_like

        plan = plan_like(name, pre, args.plans_from, raw_dir=args.raw_dir)
    else:
        plan = plan_dataset(name, pre, args.preset, args.gpu_memory_gb, raw_dir=args.raw_dir,
                            num_processes=args.num_processes, device="cpu" if args.cpu else None,
                            recalibrate=args.recalibrate)
    print(plan_table(plan, reasons=not args.brief))
    say(f"wrote {pre / name / PLANS_FILE}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "plan", help="plan the networks for a dataset from its fingerprint and this machine",
                    example="autoliver plan -d LiTS --gpu-memory-gb 8")
    add_dataset_arg(p)
    add_folder_args(p, "raw", "preprocessed")
    p.add_argument("--preset", default=None,
                   help="planner preset in planners/ (default, lowmem, cpu) or a .json file; "
                        "default: 'default' with a GPU, 'cpu' without")
    p.add_argument("--gpu-memory-gb", type=float, default=None,
                   help="plan for a GPU with this much memory (GiB) instead of this machine's")
    p.add_argument("--cpu", action="store_true", help="plan for this machine's CPU even if a GPU is present")
    p.add_argument("--recalibrate", action="store_true",
                   help="measure this CPU's speed again (it is cached; run on an idle machine)")
    p.add_argument("--plans-from", default=None, metavar="MODEL",
                   help="use another model's configurations (its plans.json, or its model folder) instead of "
                        "planning, so that train --pretrained MODEL can fine-tune it on this dataset")
    p.add_argument("--brief", action="store_true", help="print the table without the reasons")
    add_workers_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run_plan)
