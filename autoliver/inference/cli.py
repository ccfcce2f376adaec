"""CLI: predict, ensemble, find_best_configuration, export (thin: parse, call the API, print)."""
from __future__ import annotations

from pathlib import Path

from autoliver.cli import add_command, add_dataset_arg, add_folder_args, add_progress_arg


def run_predict(args) -> int:
    from autoliver.inference.run import predict, request_from_args

    resolve_predict_habits(args)
    return predict(request_from_args(args))


NNUNET_CHECKPOINTS = {"checkpoint_final.pth": "final", "checkpoint_best.pth": "best"}


def resolve_predict_habits(args) -> None:
    """nnU-Net's predict spellings that need more than a second option name (in place)."""
    from autoliver.errors import UserError

    if args.nnunet_checkpoint is not None:
        chk = NNUNET_CHECKPOINTS.get(args.nnunet_checkpoint)
        if chk is None:
            raise UserError(f"-chk {args.nnunet_checkpoint}: must be one of {', '.join(NNUNET_CHECKPOINTS)}")
        if args.checkpoint is not None and args.checkpoint != chk:
            raise UserError(f"-chk {args.nnunet_checkpoint} and --checkpoint {args.checkpoint} disagree; give one")
        args.checkpoint = chk
    if args.nnunet_trainer not in (None, "nnUNetTrainer"):
        raise UserError(f"-tr {args.nnunet_trainer}: autoliver maps nnUNetTrainer (its default recipe); a model "
                        "trained with another recipe is its own folder: pass -c 3d_fullres__RECIPE")
    if args.nnunet_plans not in (None, "nnUNetPlans"):
        raise UserError(f"-p {args.nnunet_plans}: autoliver keeps one plan per dataset (nnUNetPlans in nnU-Net's "
                        "terms); to run a model nnU-Net trained, pass its folder with -m")


def run_ensemble(args) -> int:
    from autoliver.inference.ensemble import ensemble_folders
    from autoliver.inference.inputs import check_output_folder
    from autoliver.postprocessing import NONE
    from autoliver.progress import say

    for d in args.input:
        check_output_folder(args.output, d)
    recipe = NONE
    if args.postprocessing:
        from autoliver.inference.model import read_choice

        choice = read_choice(args.postprocessing) if Path(args.postprocessing).is_file() else None
        if choice is None:
            from autoliver.errors import UserError

            raise UserError(f"--postprocessing {args.postprocessing}: give an inference_choice.json written by "
                            "find_best_configuration.")
        recipe = choice.postprocessing
    written = ensemble_folders(args.input, args.output, recipe, save_probabilities=args.save_probabilities)
    say(f"ensemble: {len(written)} case(s) written to {args.output}")
    return 0


def run_find_best(args) -> int:
    from autoliver.inference.find_best import find_best_from_args

    return find_best_from_args(args)


def run_export(args) -> int:
    from autoliver import paths
    from autoliver.inference.export import export_model, export_onnx, onnx_network
    from autoliver.progress import say

    results = paths.root("results", args.results_dir)
    folder = results / paths.resolve_dataset(args.dataset, results)
    configs = [args.configuration] if args.configuration else None
    folds = list(args.folds) if args.folds else None
    # decided before anything is written, so a missing fold stops the command, not half of it
    onnx = onnx_network(folder, args.configuration, folds, args.checkpoint) if args.onnx else None
    out = export_model(folder, args.output, configs, folds, args.checkpoint)
    say(f"export: wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MiB)")
    say(f"use it: autoliver predict -m {out} -i INPUT -o OUTPUT")
    if onnx:
        config, fold, why = onnx
        path = export_onnx(folder, config, fold, Path(args.output).with_suffix(".onnx"), args.checkpoint)
        say(f"export: wrote {path}: the network of {config}, fold {fold} ({why}; ONNX holds one network: "
            "pass -c and -f for another)")
    return 0


def register(sub) -> None:
    p = add_command(sub, "predict", help="segment scans (file, folder or DICOM series) with a trained model",
                    example="autoliver predict -i scans/ -o segmentations/ -d LiTS")
    p.add_argument("-i", "--input", required=True,
                   help="an image file, a folder of images ({case}_0000.nii.gz or any .nii.gz/.nrrd/.mha), or DICOM "
                        "series folders")
    p.add_argument("-o", "--output", required=True, help="output folder (created; never the input folder)")
    add_dataset_arg(p, required=False)
    p.add_argument("-m", "--model", default=None, help="a model .zip from `autoliver export` or a model folder "
                                                        "(instead of -d)")
    p.add_argument("-c", "--configuration", nargs="+", default=None,
                   help="configuration(s); several are averaged (default: find_best_configuration's choice, "
                        "else the only trained one)")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to average (0 1 2 3 4 or all; default: "
                                                                   "every trained fold)")
    p.add_argument("--checkpoint", choices=("final", "best"), default=None,
                   help="which checkpoint of each fold (default: the choice's, else final)")
    p.add_argument("--step-size", "-step_size", type=float, default=None,
                   help="sliding-window step as a fraction of the patch (default 0.5; --fast: 0.9)")
    p.add_argument("--disable-tta", "--disable_tta", action="store_true",
                   help="no mirroring test-time augmentation (8x faster in 3D)")
    p.add_argument("--fast", action="store_true",
                   help="CPU-friendly: one fold, no TTA, step 0.9, 3d_lowres instead of a full-resolution 3D "
                        "configuration when it is trained")
    p.add_argument("--first-stage", default=None, metavar="CONFIGURATION",
                   help="for a liver-ROI lesion stage (3d_liver_roi, 2d_liver_roi): the trained configuration "
                        "that finds the liver first (default: the one its plan names, e.g. 3d_fullres)")
    p.add_argument("--save-probabilities", "--save_probabilities", action="store_true",
                   help="also write {case}.npz with class probabilities (float16) on the scan's grid")
    p.add_argument("--continue", "--continue_prediction", dest="resume", action="store_true",
                   help="skip cases whose segmentation already exists (outputs are written atomically)")
    p.add_argument("--num-parts", "-num_parts", type=int, default=1,
                   help="split the cases into this many parts (for several machines)")
    p.add_argument("--part-id", "-part_id", type=int, default=0,
                   help="which part this run predicts (0 … num-parts - 1)")
    p.add_argument("--device", "-device", default="auto",
                   help="cpu, cuda, cuda:N or auto (a GPU when there is one)")
    p.add_argument("--postprocessing", choices=("auto", "none"), default="auto",
                   help="auto: the post-processing find_best_configuration chose; none: plain argmax")
    p.add_argument("--num-threads", type=int, default=0, help="CPU threads for the network (0: torch's default)")
    p.add_argument("--replace-nonfinite", type=float, default=None, metavar="VALUE",
                   help="replace NaN/Inf voxels by VALUE (e.g. -1000 for CT) instead of refusing the scan; the "
                        "output says how many were replaced")
    p.add_argument("--dicom-series", default=None, metavar="UID",
                   help="the SeriesInstanceUID to read when a DICOM folder holds several series (the error "
                        "message lists them)")
    p.add_argument("--output-type", choices=("nifti", "dicom_seg", "rtstruct"), default="nifti",
                   help="for DICOM series input: nifti ({case}.nii.gz), dicom_seg ({case}_seg.dcm, a DICOM-SEG "
                        "referencing the series) or rtstruct ({case}_rtstruct.dcm); needs autoliver[dicom]")
    p.add_argument("-chk", dest="nnunet_checkpoint", default=None, metavar="FILE",
                   help="nnU-Net's spelling of --checkpoint: checkpoint_final.pth or checkpoint_best.pth")
    p.add_argument("-tr", dest="nnunet_trainer", default=None, metavar="TRAINER",
                   help="nnU-Net's trainer name: only nnUNetTrainer (autoliver's default recipe; other recipes "
                        "are folders: -c 3d_fullres__adam)")
    p.add_argument("-p", dest="nnunet_plans", default=None, metavar="PLANS",
                   help="nnU-Net's plans name: only nnUNetPlans (the dataset's one plan)")
    add_folder_args(p, "results")
    add_progress_arg(p)
    p.set_defaults(func=run_predict)

    p = add_command(sub, "ensemble", help="average the probabilities of several predictions (--save-probabilities)",
                    example="autoliver ensemble -i pred_3d pred_2d -o pred_ensemble")
    p.add_argument("-i", "--input", nargs="+", required=True, help="two or more prediction folders with {case}.npz")
    p.add_argument("-o", "--output", required=True, help="output folder (created)")
    p.add_argument("--postprocessing", default=None,
                   help="an inference_choice.json whose post-processing to apply (default: none)")
    p.add_argument("--save-probabilities", action="store_true", help="also write the averaged {case}.npz")
    add_progress_arg(p)
    p.set_defaults(func=run_ensemble)

    p = add_command(sub, "find_best_configuration",
                    help="compare trained configurations and their pairwise ensembles on cross-validation, choose "
                         "the best and its post-processing",
                    example="autoliver find_best_configuration -d LiTS")
    add_dataset_arg(p, required=False)
    p.add_argument("-c", "--configurations", nargs="+", default=None, help="configurations to compare (default: "
                                                                          "every one with cross-validation results)")
    p.add_argument("-f", "--folds", nargs="+", default=["0", "1", "2", "3", "4"], help="cross-validation folds")
    p.add_argument("--no-ensembles", action="store_true", help="do not try pairs of configurations")
    p.add_argument("--try-crf", action="store_true",
                   help="also try the 3D dense CRF as post-processing (slow: one CRF per validation case)")
    add_folder_args(p, "raw", "results")
    add_progress_arg(p)
    p.set_defaults(func=run_find_best)

    p = add_command(sub, "export", help="pack a trained model into one self-contained .zip for predict -m",
                    example="autoliver export -d LiTS -c 3d_fullres -o liver_model.zip")
    add_dataset_arg(p, required=False)
    p.add_argument("-c", "--configuration", default=None,
                   help="configuration (default: find_best_configuration's choice, else the only trained one)")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to include (default: every trained fold)")
    p.add_argument("--checkpoint", choices=("final", "best"), default="final", help="which checkpoint of each fold")
    p.add_argument("-o", "--output", required=True, help="the .zip to write")
    p.add_argument("--onnx", action="store_true", help="also write one fold's network as ONNX next to the zip")
    add_folder_args(p, "results")
    p.set_defaults(func=run_export)
