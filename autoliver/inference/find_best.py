"""``autoliver find_best_configuration``: choose configuration (or pair) and post-processing on CV.

Input: training's cross-validation outputs, ``{results}/{dataset}/{configuration}/fold_{k}/validation/``
with ``{case}.nii.gz`` (labels on the scan's grid) and, when training saved them, ``{case}.npz``
(probabilities). Every case is a validation case of exactly one fold, so each configuration has
one out-of-fold prediction per training case; references are the raw dataset's ``labelsTr``.

1. Score every configuration with validation predictions of all requested folds, and every pair of
   them as an ensemble (mean probabilities; needs the ``.npz`` files), by the mean per-case Dice
   of each region (liver = liver + tumour labels, tumour = tumour label; LiTS's conventions: a
   case where reference and prediction are both empty scores 1).
2. For the best, try post-processing steps one at a time and keep a step only when it raises the
   cross-validated Dice of the region it acts on without lowering another region's, and without
   losing a reference lesion: the lesions detected (Dice > 0.2, one-to-one, see
   :mod:`autoliver.evaluation.lesions`) over all cross-validation cases must not fall, so a step
   never trades lesion recall for Dice. Steps: Otsu thresholding (probabilities), the dense CRF
   (opt-in; its settings chosen among :data:`CRF_CHOICES`), largest liver component, tumour inside
   the liver, minimum lesion volume (among :data:`MIN_LESION_ML_CHOICES`).
3. Write ``inference_choice.json`` next to the configurations and print the predict command.

The choice is judged on the predictions training's validation made. They can differ from what
``predict`` makes (it mirrors by default; validation mirrors on a GPU only, as mirroring costs 8
network passes per tile on a CPU): each fold's ``validation/summary.json`` says how they were made,
and the choice states it (``InferenceChoice.cv_predictions``).
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoliver import progress
from autoliver.errors import UserError
from autoliver.evaluation.lesions import detected_lesions
from autoliver.evaluation.metrics import dice
from autoliver.inference.model import CHOICE_SCHEMA_VERSION, FOLD_RE, InferenceChoice, write_choice
from autoliver.ops.crf import CRFParams
from autoliver.postprocessing import NONE, Postprocessing, labels_from_probabilities, postprocess_labels
from autoliver.postprocessing.apply import describe_crf
from autoliver.postprocessing.steps import argmax_labels, liver_and_tumour_labels

MIN_LESION_ML_CHOICES = (0.05, 0.2, 0.5)
# CRF settings tried on cross-validation: Christ et al.'s (whose intensity sigma of 20 on a [0, 1]
# image ignores intensity, see CRFParams), then Kraehenbuehl & Koltun's intensity sigma (13/255),
# with a wide and a narrower appearance kernel.
CRF_CHOICES = (CRFParams(), CRFParams(appearance_intensity_sigma=0.05),
               CRFParams(appearance_sigma_mm=20.0, appearance_intensity_sigma=0.05))
TOLERANCE = 1e-4  # a Dice change below this is noise, not an improvement
LESION_RULE = "dice>0.2"  # the detection rule a post-processing step must not lose lesions under
PREDICT_STEP_SIZE = 0.5  # predict's default --step-size


def regions_of(labels: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Region name → label values scored together (the liver includes its tumours, as LiTS)."""
    liver, tumour = liver_and_tumour_labels(labels)
    out = {}
    for name, v in sorted(labels.items(), key=lambda kv: kv[1]):
        if v == 0:
            continue
        out[name] = (liver, tumour) if v == liver and tumour is not None else (v,)
    return out


def score_case(seg: np.ndarray, reference: np.ndarray, regions: dict[str, tuple[int, ...]]) -> dict[str, float]:
    return {name: dice(np.isin(reference, values), np.isin(seg, values)) for name, values in regions.items()}


@dataclass(frozen=True)
class Candidate:
    configurations: tuple[str, ...]

    @property
    def name(self) -> str:
        return "+".join(self.configurations)


@dataclass
class CrossValidation:
    """Where each configuration's out-of-fold prediction of each case lies, and the references."""

    model_dir: Path
    labels_dir: Path
    label_ending: str
    images_dir: Path | None
    labels: dict[str, int]
    folders: dict[str, dict[str, Path]]  # configuration → case → validation folder
    folds: tuple[str, ...]
    # configuration → how its validation predicted (from validation/summary.json), see describe_predictions
    made_with: dict[str, dict[str, object]] = dataclasses.field(default_factory=dict)

    @property
    def cases(self) -> list[str]:
        sets = [set(v) for v in self.folders.values()]
        return sorted(set.intersection(*sets)) if sets else []

    def has_probabilities(self, config: str) -> bool:
        return all((d / f"{c}.npz").is_file() for c, d in self.folders[config].items())

    def describe_predictions(self, candidate: "Candidate") -> str:
        """How the candidate's cross-validation predictions were made, next to how predict runs."""
        made = [self.made_with.get(c, {}) for c in candidate.configurations]
        mirroring = {m.get("mirroring") for m in made}
        steps = {v for m in made for v in m.get("step_sizes", (PREDICT_STEP_SIZE,))}
        if None in mirroring:
            return ("judged on cross-validation predictions made in an unknown way (no validation/summary.json "
                    "says whether they were mirrored); predict mirrors and uses step 0.5 by default")
        how = (f"{'with' if mirroring == {True} else 'without' if mirroring == {False} else 'partly with'} "
               f"mirroring, step {', '.join(f'{v:g}' for v in sorted(steps))}")
        if mirroring == {True} and steps == {PREDICT_STEP_SIZE}:
            return f"judged on cross-validation predictions made as predict runs by default ({how})"
        return (f"judged on cross-validation predictions made {how}; predict mirrors and uses step 0.5 by default "
                "(--disable-tta predicts without mirroring)")

    def reference(self, case: str):
        from autoliver.io.images import read_image

        img = read_image(self.labels_dir / f"{case}{self.label_ending}")
        return img.array.astype(np.uint8), img.geometry.spacing_zyx_mm

    def image(self, case: str) -> np.ndarray:
        from autoliver.io.images import read_image

        return read_image(self.images_dir / f"{case}_0000{self.label_ending}").array

    def prediction(self, candidate: Candidate, case: str, probabilities: bool):
        """(labels, probabilities or None) of a candidate for one case."""
        from autoliver.io.images import read_image

        if len(candidate.configurations) == 1 and not probabilities:
            folder = self.folders[candidate.configurations[0]][case]
            return read_image(folder / f"{case}.nii.gz").array.astype(np.uint8), None
        mean = None
        for i, config in enumerate(candidate.configurations):
            with np.load(self.folders[config][case] / f"{case}.npz") as z:
                p = z["probabilities"].astype(np.float32)
            mean = p if mean is None else mean + (p - mean) / (i + 1)
        return argmax_labels(mean), mean


def collect_cross_validation(model_dir: Path, labels_dir: Path, label_ending: str, labels: dict[str, int],
                             configurations: list[str] | None, folds: tuple[str, ...],
                             images_dir: Path | None = None) -> CrossValidation:
    """Configurations whose every requested fold has validation predictions."""
    names = configurations or sorted(p.name for p in model_dir.iterdir()
                                     if p.is_dir() and any(FOLD_RE.match(q.name) for q in p.iterdir()))
    folders: dict[str, dict[str, Path]] = {}
    made_with: dict[str, dict[str, object]] = {}
    skipped = []
    for name in names:
        per_case: dict[str, Path] = {}
        missing = []
        for f in folds:
            val = model_dir / name / f"fold_{f}" / "validation"
            files = sorted(val.glob("*.nii.gz")) if val.is_dir() else []
            if not files:
                missing.append(f)
            for p in files:
                if not p.name.startswith("."):
                    per_case[p.name[: -len(".nii.gz")]] = val
        if missing:
            skipped.append(f"{name} (no validation predictions for fold {', '.join(missing)})")
            continue
        folders[name] = per_case
        made_with[name] = _how_validation_predicted([model_dir / name / f"fold_{f}" / "validation" for f in folds])
    if skipped:
        progress.say("find_best_configuration: skipped " + "; ".join(skipped))
    if not folders:
        raise UserError(f"{model_dir}: no configuration has validation predictions for folds {', '.join(folds)}. "
                        "Train every fold (autoliver train CONFIG FOLD), or pass -f with the folds you trained.")
    return CrossValidation(model_dir, labels_dir, label_ending, images_dir, labels, folders, tuple(folds), made_with)


def _how_validation_predicted(folders: list[Path]) -> dict[str, object]:
    """{"mirroring": True, False, "mixed" (folds differ) or None (unknown), "step_sizes": (...)} of the
    folds' validation, from the summary.json the trainer writes next to the predictions."""
    import json

    mirroring, steps = set(), set()
    for folder in folders:
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError):
            return {"mirroring": None}
        mirroring.add(summary.get("mirroring"))
        # Validation has always used step 0.5; summaries written before it was recorded lack the key.
        steps.add(float(summary.get("step_size", PREDICT_STEP_SIZE)))
    if None in mirroring:
        return {"mirroring": None}
    return {"mirroring": mirroring.pop() if len(mirroring) == 1 else "mixed", "step_sizes": tuple(sorted(steps))}


def _mean_scores(per_case: list[dict[str, float]]) -> dict[str, float]:
    names = per_case[0].keys() if per_case else []
    return {n: float(np.mean([c[n] for c in per_case])) for n in names}


@dataclass(frozen=True)
class CVScore:
    """A (candidate, recipe) on cross-validation: mean Dice per region, and the reference lesions
    detected (Dice > 0.2) over all cases."""

    dice: dict[str, float]
    lesions_detected: int = 0
    lesions: int = 0

    def detected_of_total(self) -> str:
        return f"{self.lesions_detected}/{self.lesions}"


def evaluate_candidates(cv: CrossValidation, candidates: list[Candidate], recipes: dict[str, Postprocessing],
                        pairs: list[tuple[Candidate, str]], try_crf: bool = False) -> dict[tuple[str, str], CVScore]:
    """Scores of every (candidate, recipe name) pair in ``pairs``, one pass over the cases."""
    regions = regions_of(cv.labels)
    _, tumour = liver_and_tumour_labels(cv.labels)
    per: dict[tuple[str, str], list[dict[str, float]]] = {(c.name, r): [] for c, r in pairs}
    found: dict[tuple[str, str], list[int]] = {(c.name, r): [0, 0] for c, r in pairs}
    for case in progress.bar(cv.cases, desc="cross-validation", unit="case", leave=False):
        reference, spacing = cv.reference(case)
        image = cv.image(case) if try_crf and any(recipes[r].crf for _, r in pairs) else None
        by_candidate: dict[str, list[str]] = {}
        for c, r in pairs:
            by_candidate.setdefault(c.name, []).append(r)
        for c in candidates:
            if c.name not in by_candidate:
                continue
            need_p = any(recipes[r].needs_probabilities for r in by_candidate[c.name])
            seg, probs = cv.prediction(c, case, need_p)
            for r in by_candidate[c.name]:
                recipe = recipes[r]
                s = seg
                if recipe.needs_probabilities:
                    s = labels_from_probabilities(probs, recipe, cv.labels, image=image, spacing_zyx_mm=spacing)
                s = postprocess_labels(s, spacing, recipe, cv.labels)
                per[(c.name, r)].append(score_case(s, reference, regions))
                if tumour is not None:
                    hit, total = detected_lesions(reference == tumour, s == tumour, LESION_RULE)
                    found[(c.name, r)][0] += hit
                    found[(c.name, r)][1] += total
    return {k: CVScore(_mean_scores(v), *found[k]) for k, v in per.items()}


def _overall(scores: dict[str, float]) -> float:
    return float(np.mean(list(scores.values()))) if scores else 0.0


def _improves(new: dict[str, float], old: dict[str, float], targets: tuple[str, ...]) -> bool:
    gain = np.mean([new[t] - old[t] for t in targets])
    worse = any(new[n] < old[n] - TOLERANCE for n in new if n not in targets)
    return gain > TOLERANCE and not worse and all(new[t] >= old[t] - TOLERANCE for t in targets)


def choose_postprocessing(cv: CrossValidation, best: Candidate, baseline: dict[str, float], try_crf: bool = False,
                          log=progress.say) -> tuple[Postprocessing, dict[str, float]]:
    """Greedy: each step is kept only when it raises its region's cross-validated Dice and loses no
    reference lesion (see the module doc); a step's variants that lose lesions are not eligible."""
    liver, tumour = liver_and_tumour_labels(cv.labels)
    names = {v: n for n, v in cv.labels.items()}
    liver_name = names.get(liver)
    tumour_name = names.get(tumour) if tumour is not None else None
    everything = tuple(baseline)
    has_p = all(cv.has_probabilities(c) for c in best.configurations)
    trials: list[tuple[str, tuple[str, ...], list[dict]]] = []
    if has_p:
        trials.append(("Otsu thresholds", everything, [{"otsu": True}]))
        if try_crf:
            trials.append(("dense CRF", everything, [{"crf": True, "crf_params": p} for p in CRF_CHOICES]))
    if liver_name:
        trials.append(("largest liver component", (liver_name,), [{"keep_largest_liver": True}]))
    if tumour_name:
        trials.append(("tumour inside the liver", (tumour_name,), [{"tumour_in_liver": True}]))
        trials.append(("minimum lesion volume", (tumour_name,), [{"min_lesion_ml": v} for v in MIN_LESION_ML_CHOICES]))
    recipe, scores = NONE, dict(baseline)
    current = None  # lesions detected with ``recipe``; counted with the first trial
    for what, targets, variants in trials:
        recipes = {f"v{i}": dataclasses.replace(recipe, **v) for i, v in enumerate(variants)}
        if current is None and tumour_name:
            recipes["current"] = recipe
        result = evaluate_candidates(cv, [best], recipes, [(best, r) for r in recipes], try_crf)
        if "current" in recipes:
            current = result.pop((best.name, "current"))
            del recipes["current"]
            log(f"  lesions detected (Dice > 0.2) without post-processing: {current.detected_of_total()}")
        tried = {r: result[(best.name, r)] for r in recipes}
        keeps_lesions = {r: current is None or v.lesions_detected >= current.lesions_detected for r, v in tried.items()}
        eligible = [r for r in tried if keeps_lesions[r]] or list(tried)
        name = max(eligible, key=lambda r: np.mean([tried[r].dice[t] for t in targets]))
        new = tried[name]
        kept = keeps_lesions[name] and _improves(new.dice, scores, targets)
        detail = ", ".join(f"{t} {scores[t]:.4f} → {new.dice[t]:.4f}" for t in targets)
        if current is not None:
            detail += f", lesions detected {current.detected_of_total()} → {new.detected_of_total()}"
        if len(variants) > 1:
            detail += f" (best of {len(variants)}: {_variant(variants[int(name[1:])])})"
        why = "" if kept or keeps_lesions[name] else " (it loses reference lesions)"
        log(f"  {what}: {detail}: {'kept' if kept else 'not kept'}{why}")
        if kept:
            recipe, scores = recipes[name], new.dice
            current = new if current is not None else None
    return recipe, scores


def _variant(v: dict) -> str:
    return ", ".join(describe_crf(x) if isinstance(x, CRFParams) else f"{k} {x:g}" for k, x in v.items()
                     if k != "crf")


def find_best_configuration(cv: CrossValidation, dataset_name: str, allow_ensembles: bool = True,
                            try_crf: bool = False, checkpoint: str = "final", log=progress.say) -> InferenceChoice:
    """Score configurations and pairs on cross-validation, choose post-processing, write the choice."""
    configs = sorted(cv.folders)
    candidates = [Candidate((c,)) for c in configs]
    if allow_ensembles:
        with_p = [c for c in configs if cv.has_probabilities(c)]
        candidates += [Candidate(pair) for pair in itertools.combinations(with_p, 2)]
        without = sorted(set(configs) - set(with_p))
        if without and len(configs) > 1:
            log(f"find_best_configuration: no saved probabilities for {', '.join(without)}; they are not tried in "
                "ensembles (train with probabilities saved for validation to include them).")
    if not cv.cases:
        raise UserError(f"{cv.model_dir}: the configurations share no validation case; train the same folds for all.")
    log(f"find_best_configuration: {len(candidates)} candidate(s) on {len(cv.cases)} cross-validation case(s)")
    scores = evaluate_candidates(cv, candidates, {"none": NONE}, [(c, "none") for c in candidates])
    table = {c.name: scores[(c.name, "none")].dice for c in candidates}
    for name, s in sorted(table.items(), key=lambda kv: -_overall(kv[1])):
        log(f"  {name:40s} " + "  ".join(f"{k} {v:.4f}" for k, v in s.items()) + f"  mean {_overall(s):.4f}")
    # Ties go to the simpler candidate (fewer configurations), then by name for determinism.
    best = max(candidates, key=lambda c: (round(_overall(table[c.name]), 6), -len(c.configurations), c.name))
    made = cv.describe_predictions(best)
    log(f"best: {best.name}; deciding post-processing on its cross-validation predictions ({made})")
    recipe, final_scores = choose_postprocessing(cv, best, table[best.name], try_crf, log)
    dataset = dataset_name
    configs_arg = " ".join(best.configurations)
    folds_arg = " ".join(cv.folds)
    command = f"autoliver predict -d {dataset} -i INPUT_FOLDER -o OUTPUT_FOLDER"
    choice = InferenceChoice(
        schema_version=CHOICE_SCHEMA_VERSION, dataset_name=dataset, configurations=best.configurations,
        folds=cv.folds, checkpoint=checkpoint, postprocessing=recipe, cv_dice=final_scores,
        candidates={name: {**s, "mean": _overall(s)} for name, s in table.items()},
        predict_command=f"{command}   (same as: -c {configs_arg} -f {folds_arg})", cv_predictions=made)
    return choice


def find_best_from_args(args) -> int:
    from autoliver import paths
    from autoliver.datasets.dataset import open_dataset
    from autoliver.planning.plan import read_plan

    results = paths.root("results", args.results_dir)
    name = paths.resolve_dataset(args.dataset, results)
    model_dir = results / name
    info = open_dataset(name, args.raw_dir)
    labels = None
    for p in sorted(model_dir.glob("*/plans.json")):
        labels = read_plan(p).labels
        break
    labels = labels or info.labels
    cv = collect_cross_validation(model_dir, info.labels_dir, info.file_ending, labels, args.configurations,
                                  tuple(args.folds), images_dir=info.images_dir)
    choice = find_best_configuration(cv, name, allow_ensembles=not args.no_ensembles, try_crf=args.try_crf)
    path = write_choice(model_dir, choice)
    print(f"chosen: {' + '.join(choice.configurations)} (folds {', '.join(choice.folds)}); post-processing: "
          f"{choice.postprocessing.describe()}")
    print("cross-validated Dice: " + ", ".join(f"{k} {v:.4f}" for k, v in choice.cv_dice.items()))
    print(choice.cv_predictions[0].upper() + choice.cv_predictions[1:] + ".")
    print(f"written: {path}")
    print("predict with:")
    print(f"  {choice.predict_command}")
    return 0
