"""CLI: extract_fingerprint."""
from __future__ import annotations

from autoliver.cli import add_command, add_dataset_arg, add_folder_args, add_progress_arg, add_workers_arg


def summary_lines(fingerprint) -> list[str]:
    import numpy as np

    spacings = np.array([c.spacing_zyx_mm for c in fingerprint.cases])
    shapes = np.array([c.shape_after_crop_zyx for c in fingerprint.cases])
    lines = [f"{fingerprint.dataset_name}: {fingerprint.num_cases} cases, {fingerprint.modality}, "
             f"{len(fingerprint.channel_names)} channel(s), {fingerprint.num_phases} phase(s), crop rule {fingerprint.crop_rule}",
             f"  median spacing (z, y, x) mm: {tuple(round(float(s), 3) for s in np.median(spacings, 0))}",
             f"  median shape after crop (z, y, x): {tuple(int(s) for s in np.median(shapes, 0))}"]
    for name, st, noise in zip(fingerprint.channel_names, fingerprint.foreground_intensity, fingerprint.noise_sigma):
        lines.append(f"  {name}: foreground mean {st.mean:.1f}, std {st.std:.1f}, p0.5 {st.percentile_00_5:.1f}, "
                     f"p99.5 {st.percentile_99_5:.1f}; noise σ {noise:.1f}")
    livers = [c.labels.liver_ml for c in fingerprint.cases]
    tumours = [c.labels.tumour_count for c in fingerprint.cases]
    lines.append(f"  liver median {np.median(livers):.0f} mL; tumours per case median {np.median(tumours):.0f}, "
                 f"cases without tumour {sum(t == 0 for t in tumours)}")
    return lines


def run_extract(args) -> int:
    from autoliver import paths
    from autoliver.datasets.dataset import open_dataset
    from autoliver.fingerprint.api import FINGERPRINT_FILE, extract_fingerprint
    from autoliver.progress import say

    info = open_dataset(args.dataset, args.raw_dir)
    pre = paths.root("preprocessed", args.preprocessed_dir)
    fingerprint = extract_fingerprint(info, pre, num_processes=args.num_processes, overwrite=args.overwrite)
    for line in summary_lines(fingerprint):
        print(line)
    say(f"wrote {pre / info.name / FINGERPRINT_FILE}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "extract_fingerprint", help="measure a dataset: geometry, intensities, labels, noise",
                    example="autoliver extract_fingerprint -d LiTS -np 4")
    add_dataset_arg(p)
    add_folder_args(p, "raw", "preprocessed")
    add_workers_arg(p)
    p.add_argument("--overwrite", action="store_true", help="recompute even if fingerprint.json exists")
    add_progress_arg(p)
    p.set_defaults(func=run_extract)
