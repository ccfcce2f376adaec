"""CLI: evaluate, report, track."""
from __future__ import annotations

from autoliver.cli import add_command, add_progress_arg, add_workers_arg
from autoliver.errors import UserError


def _parse_regions(items: list[str] | None) -> dict[str, tuple[int, ...]] | None:
    """['liver=1,2', 'tumour=2'] → {'liver': (1, 2), 'tumour': (2,)}."""
    if not items:
        return None
    regions = {}
    for item in items:
        name, _, values = item.partition("=")
        try:
            labels = tuple(int(v) for v in values.split(",") if v.strip())
        except ValueError:
            labels = ()
        if not name or not labels or any(v <= 0 for v in labels):
            raise UserError(f"--regions: each entry must be NAME=LABEL[,LABEL...] with labels > 0, got {item!r}. "
                            "Example: --regions liver=1,2 tumour=2")
        regions[name] = labels
    return regions


def run_evaluate(args) -> int:
    import dataclasses

    from autoliver.evaluation.evaluate import Settings, evaluate
    from autoliver.progress import say

    if args.nsd_tolerance <= 0:
        raise UserError(f"--nsd-tolerance: must be > 0 mm, got {args.nsd_tolerance}.")
    settings = Settings(nsd_tolerance_mm=args.nsd_tolerance)
    regions = _parse_regions(args.regions)
    if regions:
        settings = dataclasses.replace(settings, regions=regions)
    summary = evaluate(args.reference, args.prediction, args.output, settings=settings,
                       num_processes=args.num_processes, overview_dir=args.overview, html=args.html,
                       images=args.images, progress=not args.no_progress)

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    for name, r in summary.regions.items():
        m = r.mean
        print(f"{name}: Dice per case {r.dice_per_case:.4f}, global {r.dice_global:.4f}; ASSD {fmt(m['assd_mm'])} mm, "
              f"HD95 {fmt(m['hd95_mm'])} mm, NSD@{settings.nsd_tolerance_mm:g}mm {fmt(m['nsd'])}")
    for rule, d in summary.lesion_detection.items():
        print(f"lesions ({rule}): TP {d.all.tp} FP {d.all.fp} FN {d.all.fn}, precision {d.all.precision:.3f}, "
              f"recall {d.all.recall:.3f} (small {d.small.recall:.3f}, large {d.large.recall:.3f}), F1 {d.all.f1:.3f}")
    say(f"wrote {args.output}" + (f" and {args.html}" if args.html else ""))
    return 0


def run_report(args) -> int:
    from autoliver.evaluation.report import report
    from autoliver.progress import say

    files = report(args.input, args.seg, args.output, phase=args.phase, liver_labels=tuple(args.liver_labels),
                   tumour_labels=tuple(args.tumour_labels))
    s = files.statistics
    print(f"liver {s.liver_ml:.1f} mL, {s.num_lesions} lesion(s), tumour {s.tumour_ml:.2f} mL")
    for lesion in s.lesions[:10]:
        print(f"  lesion {lesion.id}: {lesion.volume_ml:.2f} mL, longest axial diameter "
              f"{lesion.longest_axial_diameter_mm:.1f} mm")
    say(f"wrote {len(files.pictures)} pictures and statistics.json/.csv to {args.output}")
    return 0


def run_track(args) -> int:
    from autoliver.evaluation.track import track
    from autoliver.progress import say

    result = track(args.baseline, args.followup, args.seg_baseline, args.seg_followup, args.output,
                   kind=args.transform, max_distance_mm=args.max_distance, new_lesion_min_mm=args.new_lesion_min,
                   max_targets=args.max_targets, liver_labels=tuple(args.liver_labels),
                   tumour_labels=tuple(args.tumour_labels))
    reg = result.registration
    print(f"registration ({reg.kind}): liver centre moved {tuple(round(v, 1) for v in reg.translation_mm)} mm, "
          f"liver Dice after registration {reg.liver_dice:.3f}")
    for r in result.lesions:
        def mm(v):
            return "-" if v is None else f"{v:.1f}"
        print(f"  {r.status:<11} {'target ' if r.target else '       '}baseline {r.baseline_id or '-'} "
              f"→ follow-up {' '.join(map(str, r.followup_ids)) or '-'}: {mm(r.baseline_diameter_mm)} → "
              f"{mm(r.followup_diameter_mm)} mm")
    rc = result.recist
    print(f"RECIST 1.1: {rc.response} ({rc.reason})")
    if args.output:
        say(f"wrote {args.output}/track.json, track.csv, transform.tfm")
    return 0


def _add_label_args(p) -> None:
    p.add_argument("--liver-labels", type=int, nargs="+", default=[1, 2],
                   help="label values that make up the liver (its tumours included)")
    p.add_argument("--tumour-labels", type=int, nargs="+", default=[2], help="label values of tumours")


def register(sub) -> None:
    p = add_command(sub, "evaluate", help="score predicted segmentations against references (LiTS metrics, "
                    "lesion detection)",
                    example="autoliver evaluate -ref labelsTr -pred predictions -o summary.json --html summary.html")
    p.add_argument("-ref", "--reference", required=True, help="reference label file or folder")
    p.add_argument("-pred", "--prediction", required=True, help="predicted label file or folder (same case names)")
    p.add_argument("-o", "--output", default="summary.json", help="summary JSON to write")
    p.add_argument("--html", default=None, help="also write a one-page HTML summary with pictures (opens offline)")
    p.add_argument("--overview", default=None, help="folder for one overview PNG per case")
    p.add_argument("--images", default=None, help="folder of the scans ({case}_0000.nii.gz) to draw under the outlines")
    p.add_argument("--regions", nargs="+", default=None, metavar="NAME=LABELS",
                   help="label sets to score (default: liver=1,2 tumour=2)")
    p.add_argument("--nsd-tolerance", type=float, default=2.0, help="tolerance of the normalised surface Dice, mm")
    add_workers_arg(p)
    add_progress_arg(p)
    p.set_defaults(func=run_evaluate)

    p = add_command(sub, "report", help="pictures (axial/coronal/sagittal through the liver and the largest lesion) "
                    "and volumes/diameters of one segmented scan",
                    example="autoliver report -i case_0000.nii.gz -s case.nii.gz -o case_report")
    p.add_argument("-i", "--input", required=True, help="the scan (file or DICOM folder)")
    p.add_argument("-s", "--seg", required=True, help="its segmentation (0 background, 1 liver, 2 tumour)")
    p.add_argument("-o", "--output", required=True, help="folder to write the pictures and statistics into")
    p.add_argument("--phase", type=int, default=0, help="which phase to draw when the scan is 4D (DCE-MRI)")
    _add_label_args(p)
    p.set_defaults(func=run_report)

    p = add_command(sub, "track", help="compare a follow-up scan with the baseline: registration, lesion matching, "
                    "diameter/volume change, RECIST 1.1 response",
                    example="autoliver track base.nii.gz follow.nii.gz --seg-baseline base_seg.nii.gz "
                            "--seg-followup follow_seg.nii.gz -o tracking")
    p.add_argument("baseline", help="baseline scan")
    p.add_argument("followup", help="follow-up scan of the same patient")
    p.add_argument("--seg-baseline", default=None, help="segmentation of the baseline scan")
    p.add_argument("--seg-followup", default=None, help="segmentation of the follow-up scan")
    p.add_argument("-o", "--output", default=None, help="folder for track.json/.csv, the transform and a picture")
    p.add_argument("--transform", default="rigid", help="registration: rigid or affine (affine starts from rigid)")
    p.add_argument("--max-distance", type=float, default=15.0,
                   help="mm: lesions that overlap nothing are matched when their centres are this close")
    p.add_argument("--new-lesion-min", type=float, default=5.0,
                   help="mm: smallest longest-diameter of a new lesion that counts as progression")
    p.add_argument("--max-targets", type=int, default=2, help="RECIST target lesions (2 per organ in RECIST 1.1)")
    _add_label_args(p)
    p.set_defaults(func=run_track)
