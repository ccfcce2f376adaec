"""CLI: make_synthetic."""
from __future__ import annotations

from autoliver.cli import add_command, add_folder_args, add_progress_arg


def add_randomize_arg(p, help_text: str) -> None:
    """``--randomize [VERSION]``: a generator version 2 or 3, the latest when no number follows."""
    from autoliver.synthetic import LATEST, VERSIONS

    p.add_argument("--randomize", nargs="?", type=int, const=LATEST, default=0, choices=VERSIONS, metavar="VERSION",
                   help=help_text.format(latest=LATEST))


def run_make_synthetic(args) -> int:
    from autoliver import paths
    from autoliver.errors import UserError
    from autoliver.progress import say
    from autoliver.synthetic.dataset import make_synthetic_dataset

    spec = args.dataset.strip()
    m = paths.DATASET_RE.match(spec)
    if m:  # a full name carries its own id
        if args.dataset_id is not None and args.dataset_id != int(m.group(1)):
            raise UserError(f"-d {spec} and --dataset-id {args.dataset_id} disagree; give one of them.")
        dataset_id, name = int(m.group(1)), m.group(2)
    elif spec.isdigit():
        raise UserError(f"-d {spec}: make_synthetic needs a name for the new dataset (e.g. -d Demo), "
                        "with --dataset-id for its number.")
    else:
        dataset_id, name = (1 if args.dataset_id is None else args.dataset_id), spec
    raw = paths.root("raw", args.raw_dir)
    folder_name = paths.dataset_folder_name(dataset_id, name)
    # nnU-Net ids are unique: another dataset with this id would make `-d 1` ambiguous later.
    clash = [n for n in paths.list_datasets(raw) if int(paths.DATASET_RE.match(n).group(1)) == dataset_id
             and n != folder_name]
    if clash:
        raise UserError(f"--dataset-id {dataset_id}: {raw} already has {clash[0]} with that id. "
                        "Choose another --dataset-id.")
    out = make_synthetic_dataset(raw / folder_name, args.cases, seed=args.seed, modality=args.modality,
                                 shape_zyx=tuple(args.shape), progress=not args.no_progress,
                                 overwrite=args.overwrite, randomize=args.randomize)
    version = f", randomised (generator version {args.randomize})" if args.randomize else ""
    say(f"wrote {out} ({args.cases} {args.modality} cases{version})")
    say(f"next: autoliver verify_dataset -d {folder_name}")
    return 0


def register(sub) -> None:
    p = add_command(
        sub, "make_synthetic", help="generate a raw dataset of synthetic abdominal CT or DCE-MRI phantoms",
        example="autoliver make_synthetic -d Demo --cases 10 --seed 0 --modality ct",
        description="Generate a raw dataset (nnU-Net v2 layout) of synthetic abdominal phantoms with liver (1)\n"
                    "and tumour (2) labels: portal-phase CT in HU, or 4-phase DCE-MRI (pre, arterial, portal,\n"
                    "delayed) as 4 channels. The same seed gives byte-identical files. Anatomy is in millimetres:\n"
                    "a small --shape still holds the whole abdomen and liver, at a coarser spacing.")
    p.add_argument("-d", "--dataset", required=True,
                   help="name of the new dataset (Demo → Dataset001_Demo), or a full name Dataset001_Demo")
    p.add_argument("--dataset-id", type=int, default=None, help="id of the new dataset (default 1)")
    p.add_argument("--cases", type=int, default=10, help="number of cases")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed; the same seed gives the same files (default: %(default)s)")
    p.add_argument("--modality", choices=("ct", "dce_mri"), default="ct", help="CT (HU) or 4-phase DCE-MRI")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=[100, 256, 256],
                   help="voxels per case (slices, rows, columns)")
    add_randomize_arg(p, "generator version VERSION (CT; default: the latest, {latest}): contrast phases, scanners, "
                         "framing and bodies drawn per case, some with unrealistic contrast, so a model learns real "
                         "livers; version 3 adds the pelvis (README, 'Phantoms for real scans'); without it, "
                         "version 1 (one portal-phase look)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that id and name")
    add_folder_args(p, "raw")
    add_progress_arg(p)
    p.set_defaults(func=run_make_synthetic)
