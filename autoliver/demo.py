"""``autoliver demo``: the whole pipeline on a generated dataset, on whatever machine this is.

    make_synthetic → fingerprint + plan (CPU preset without a GPU) → preprocess → train (fold "all",
    to a time budget) → predict held-out phantoms → evaluate → print Dice and where everything is

Everything lives in one work folder (``--workdir``, default ``./autoliver_demo``) with its own
``raw/``, ``preprocessed/`` and ``results/``, so the demo never touches a user's datasets. Each
step skips work already done, so an interrupted demo resumes; ``--overwrite`` starts over.

The held-out phantoms are a second synthetic dataset drawn with another seed: the network never
saw them. Training times its first epoch on this machine, then trains as many epochs as fit
``--train-minutes`` (``autoliver train --minutes``; the learning-rate schedule spans them all).
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from autoliver.cli import add_command, add_progress_arg
from autoliver.synthetic.cli import add_randomize_arg

DATASET = "Dataset900_LiverDemo"
HELDOUT = "Dataset901_LiverDemoHeldout"


@dataclass(frozen=True)
class DemoSettings:
    workdir: Path = Path("autoliver_demo")
    train_cases: int = 24
    test_cases: int = 5
    shape_zyx: tuple[int, int, int] = (64, 128, 128)
    seed: int = 0
    configuration: str = "auto"
    preset: str | None = None  # None: "cpu" without a GPU, "default" with one
    train_minutes: float = 9.0
    iterations_per_epoch: int = 25
    epochs: int | None = None  # fixed number of epochs instead of the time budget
    num_processes: int = 2
    tta: bool = True
    overwrite: bool = False
    progress: bool = True
    randomize: int = 0  # 0: generator version 1; 2 or 3: make_synthetic --randomize VERSION


@dataclass
class DemoResult:
    liver_dice: float
    tumour_dice: float | None
    per_case: dict[str, dict[str, float]]
    seconds: dict[str, float]
    paths: dict[str, Path]


def _step(name: str, seconds: dict, say):
    """A context manager that times one step and announces it."""
    class _Timer:
        def __enter__(self):
            say(f"[demo] {name} …")
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            seconds[name] = time.perf_counter() - self.t0
            if exc[0] is None:
                say(f"[demo] {name}: {seconds[name]:.0f} s")
            return False

    return _Timer()


def _make_data(s: DemoSettings, raw: Path, heldout_root: Path) -> tuple[Path, Path]:
    from autoliver.synthetic import make_synthetic_dataset

    from autoliver.errors import UserError
    from autoliver.synthetic.randomize import version_of

    train = raw / DATASET
    heldout = heldout_root / HELDOUT
    version = version_of(s.randomize)
    for folder in (train, heldout):
        meta = folder / "dataset.json"
        found = json.loads(meta.read_text()).get("synthetic", {}).get("generator_version") if meta.is_file() else None
        if found is not None and found != version:
            raise UserError(f"{folder}: made by generator version {found}, but this demo asks for version {version} "
                            f"({f'--randomize {version}' if s.randomize else 'without --randomize'}). "
                            "Use another --workdir, or "
                            "--overwrite to start this one over.")
    if not (train / "dataset.json").is_file():
        make_synthetic_dataset(train, s.train_cases, seed=s.seed, shape_zyx=s.shape_zyx, progress=s.progress,
                               randomize=s.randomize)
    if not (heldout / "dataset.json").is_file():
        # Another seed: phantoms the network never sees in training.
        make_synthetic_dataset(heldout, s.test_cases, seed=s.seed + 7919, shape_zyx=s.shape_zyx, progress=s.progress,
                               randomize=s.randomize)
    return train, heldout


def _plan(s: DemoSettings, info, preprocessed: Path):
    """The plan of an earlier (interrupted) demo run if there is one: planning measures this
    machine, and a re-plan under another load could change the data already preprocessed."""
    from autoliver.fingerprint.api import extract_fingerprint
    from autoliver.planning.api import PLANS_FILE, plan_dataset
    from autoliver.planning.plan import read_plan

    existing = preprocessed / info.name / PLANS_FILE
    if existing.is_file():
        return read_plan(existing)
    extract_fingerprint(info, preprocessed, num_processes=s.num_processes)
    return plan_dataset(info.name, preprocessed, preset=s.preset)


def field_of_view(config) -> float:
    """Share of the median image one patch sees (in-plane for 2D): context is what tells the liver
    from the spleen, and a short training learns fastest when a patch sees most of the organ."""
    shape = config.median_shape_zyx[-len(config.patch_size):]
    return float(math.prod(min(1.0, p / max(1, n)) for p, n in zip(config.patch_size, shape)))


def choose_configuration(plan, wanted: str) -> str:
    """``wanted`` if the plan has it; "auto": the single-stage configuration whose patch sees the
    largest share of the image (3d_fullres on ties)."""
    from autoliver.errors import choose

    if wanted != "auto":
        return choose("--configuration", wanted, plan.configurations)
    candidates = [c for c in ("3d_fullres", "3d_lowres", "2d") if c in plan.configurations]
    return max(candidates, key=lambda c: (round(field_of_view(plan.configurations[c]), 3), c == "3d_fullres"))


def _train(s: DemoSettings, plan, configuration: str, preprocessed: Path, results: Path, say) -> Path:
    from autoliver.training.checkpoint import checkpoint_path
    from autoliver.training.recipes import get_recipe
    from autoliver.training.trainer import TrainingRun, fold_folder, train

    recipe = get_recipe("default")
    results = results / plan.dataset_name
    fold_dir = fold_folder(results, configuration, recipe.name, "all")
    if checkpoint_path(fold_dir, "final").is_file():
        say(f"[demo] {fold_dir} is trained already; reusing it (--overwrite to train again)")
        return fold_dir
    base = TrainingRun(plan=plan, configuration=configuration, fold="all", recipe=recipe,
                       preprocessed_dir=preprocessed / plan.dataset_name, results_dir=results,
                       iterations_per_epoch=s.iterations_per_epoch, validate=False, device=None)
    # A time budget: the first epoch is timed, then as many epochs as fit (the schedule spans them).
    budget = {"epochs": s.epochs} if s.epochs is not None else {"minutes": s.train_minutes}
    train(dataclasses.replace(base, resume=checkpoint_path(fold_dir, "latest").is_file(), **budget))
    return fold_dir


def run_demo(s: DemoSettings, say=None) -> DemoResult:
    from autoliver import progress
    from autoliver.datasets.dataset import parse_dataset_json
    from autoliver.evaluation.evaluate import evaluate
    from autoliver.inference.run import PredictRequest, predict
    from autoliver.preprocessing.run import preprocess_dataset

    say = say or progress.say
    work = Path(s.workdir).expanduser().resolve()
    if s.overwrite and work.exists():
        shutil.rmtree(work)
    raw, preprocessed, results = work / "raw", work / "preprocessed", work / "results"
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    with _step("synthetic data", seconds, say):
        train_dir, heldout_dir = _make_data(s, raw, work / "heldout")
        info = parse_dataset_json(train_dir)
    with _step("fingerprint and plan", seconds, say):
        plan = _plan(s, info, preprocessed)
        configuration = choose_configuration(plan, s.configuration)
        config = plan.configurations[configuration]
        say(f"[demo] plan: {configuration}, spacing {list(config.spacing_zyx_mm)} mm, patch {list(config.patch_size)}, "
            f"batch {config.batch_size}, features {list(config.network.features_per_stage)}")
    with _step("preprocess", seconds, say):
        for summary in preprocess_dataset(info, plan, preprocessed, configurations=[configuration],
                                          num_processes=s.num_processes):
            failed = getattr(summary, "failed", None)
            if failed:
                say(f"[demo] preprocessing failed for {len(failed)} case(s): {failed}")
    with _step("train", seconds, say):
        fold_dir = _train(s, plan, configuration, preprocessed, results, say)
    predictions = work / "predictions"
    with _step("predict held-out cases", seconds, say):
        predict(PredictRequest(input=heldout_dir / "imagesTr", output=predictions, model_dir=results / DATASET,
                               configurations=(configuration,), folds=("all",), tta=s.tta))
    evaluation = work / "evaluation"
    with _step("evaluate", seconds, say):
        summary = evaluate(heldout_dir / "labelsTr", predictions, evaluation / "summary.json",
                           num_processes=1, overview_dir=evaluation / "pictures", html=evaluation / "summary.html",
                           images=heldout_dir / "imagesTr", progress=s.progress)
    seconds["total"] = time.perf_counter() - t0
    per_case = {c.case: {name: m.dice for name, m in c.regions.items()} for c in summary.cases}
    liver = summary.regions["liver"].dice_per_case if "liver" in summary.regions else float("nan")
    tumour = summary.regions["tumour"].dice_per_case if "tumour" in summary.regions else None
    paths = {"work folder": work, "training data": train_dir, "plan": preprocessed / DATASET / "plans.json",
             "model": fold_dir, "training curve": fold_dir / "progress.png", "held-out scans": heldout_dir / "imagesTr",
             "predictions": predictions, "evaluation": evaluation / "summary.json",
             "pictures": evaluation / "pictures", "report": evaluation / "summary.html"}
    return DemoResult(liver, tumour, per_case, seconds, paths)


def print_result(r: DemoResult, out=print) -> None:
    out("")
    out("autoliver demo: held-out phantoms (never seen in training)")
    for case, scores in sorted(r.per_case.items()):
        out(f"  {case}: " + ", ".join(f"{k} Dice {v:.3f}" for k, v in scores.items()))
    out(f"mean liver Dice {r.liver_dice:.3f}" + (f", tumour Dice {r.tumour_dice:.3f}" if r.tumour_dice is not None else ""))
    out("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in r.seconds.items()))
    out("where things are:")
    for name, path in r.paths.items():
        out(f"  {name:15s} {path}")
    out("next: autoliver predict -m " + str(r.paths["work folder"] / "results" / DATASET)
        + " -i YOUR_SCANS -o OUTPUT   (a model trained for minutes on phantoms; for real scans train on real data)")


def run(args) -> int:
    from autoliver.errors import UserError

    for name in ("train_cases", "test_cases"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if args.train_minutes <= 0:
        raise UserError(f"--train-minutes: must be > 0, got {args.train_minutes}")
    s = DemoSettings(workdir=Path(args.workdir), train_cases=args.train_cases, test_cases=args.test_cases,
                     shape_zyx=tuple(args.shape), seed=args.seed, configuration=args.configuration,
                     preset=args.preset, train_minutes=args.train_minutes, iterations_per_epoch=args.iters,
                     epochs=args.epochs, num_processes=args.num_processes, tta=not args.disable_tta,
                     overwrite=args.overwrite, progress=not args.no_progress, randomize=args.randomize)
    result = run_demo(s)
    print_result(result)
    if args.min_liver_dice and not result.liver_dice >= args.min_liver_dice:
        print(f"autoliver demo: liver Dice {result.liver_dice:.3f} is below --min-liver-dice {args.min_liver_dice}")
        return 1
    return 0


def register(sub) -> None:
    p = add_command(sub, "demo", help="run the whole pipeline on generated phantoms (about 15 min on 2 CPU cores)",
                    example="autoliver demo\n  autoliver demo --train-minutes 3 --train-cases 8   # quicker, rougher",
                    description="Generate a synthetic liver CT dataset, plan (CPU preset without a GPU), preprocess, "
                                "train briefly, predict held-out phantoms, evaluate, and print the Dice and where the "
                                "outputs and pictures are.")
    p.add_argument("--workdir", default="autoliver_demo", help="folder for everything the demo makes")
    p.add_argument("--train-cases", type=int, default=DemoSettings.train_cases, help="synthetic training cases")
    p.add_argument("--test-cases", type=int, default=DemoSettings.test_cases, help="held-out synthetic cases")
    p.add_argument("--shape", type=int, nargs=3, default=list(DemoSettings.shape_zyx), metavar=("Z", "Y", "X"),
                   help="voxels per phantom (z y x)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--configuration", default=DemoSettings.configuration,
                   help="configuration to train; auto: the one whose patch sees most of the image")
    p.add_argument("--preset", default=None, help="planner preset (default: cpu without a GPU, default with one)")
    p.add_argument("--train-minutes", type=float, default=DemoSettings.train_minutes, help="training time budget")
    p.add_argument("--iters", type=int, default=DemoSettings.iterations_per_epoch, help="iterations per epoch")
    p.add_argument("--epochs", type=int, default=None, help="train exactly this many epochs (ignores --train-minutes)")
    p.add_argument("--disable-tta", action="store_true", help="predict without mirroring")
    p.add_argument("--min-liver-dice", type=float, default=0.0,
                   help="exit with status 1 when the held-out liver Dice is below this (for CI)")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes for data steps")
    add_randomize_arg(p, "train on generator version VERSION (make_synthetic --randomize; default: the latest, "
                         "{latest}): phantoms that vary like real scans, for a model meant for real CTs")
    p.add_argument("--overwrite", action="store_true", help="delete the work folder first and start over")
    add_progress_arg(p)
    p.set_defaults(func=run)
