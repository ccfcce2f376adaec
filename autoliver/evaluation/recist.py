"""RECIST 1.1 response of a follow-up scan against its baseline (pure; Eisenhauer et al. 2009).

- Target lesions: at baseline, the largest measurable lesions (longest axial diameter ≥ 10 mm),
  at most 2 per organ; all lesions here lie in the liver, hence 2 by default (``max_targets``).
  The other baseline lesions are non-target lesions.
- Sum of diameters (SLD) of the targets at baseline and at follow-up; a target that disappeared
  counts 0 mm; a target that split counts the sum of its fragments; when targets merged, the merged
  lesion counts once, for the target it was matched with, the others 0 mm.
- Target response: CR = every target gone; PR = SLD down ≥ 30 %; PD = SLD up ≥ 20 % and ≥ 5 mm
  over the smallest sum on study (the baseline, with two scans); else SD.
- Non-target response: CR = every non-target gone; otherwise non-CR/non-PD (unequivocal progression
  of non-target disease is a reader's call and is not decided here).
- A new lesion means PD whatever else.
- Overall (RECIST 1.1, table 1): CR needs target CR, non-target CR (or none) and no new lesion;
  target CR with non-target disease left is PR; PR stays PR; SD is SD. Without any target at
  baseline the overall response is the non-target one (CR, non-CR/non-PD) or PD; with no disease at
  baseline and no new lesion it is "NE" (not evaluable).
"""
from __future__ import annotations

from dataclasses import dataclass

MEASURABLE_MM = 10.0
MAX_TARGETS_PER_ORGAN = 2
PR_DECREASE = 0.30
PD_INCREASE = 0.20
PD_ABSOLUTE_MM = 5.0


@dataclass(frozen=True)
class RecistResult:
    response: str  # "CR" | "PR" | "SD" | "PD" | "non-CR/non-PD" | "NE"
    target_response: str | None  # None without target lesions
    non_target_response: str | None  # "CR" | "non-CR/non-PD" | None without non-target lesions
    target_ids: list[int]  # baseline lesion ids chosen as targets, largest first
    sum_baseline_mm: float
    sum_followup_mm: float
    change_percent: float | None
    new_lesions: int
    reason: str


def choose_targets(baseline_diameters_mm: dict[int, float], max_targets: int = MAX_TARGETS_PER_ORGAN,
                   measurable_mm: float = MEASURABLE_MM) -> list[int]:
    """Ids of the largest measurable baseline lesions (ties: lower id first)."""
    measurable = [(d, i) for i, d in baseline_diameters_mm.items() if d >= measurable_mm]
    return [i for d, i in sorted(measurable, key=lambda t: (-t[0], t[1]))[:max_targets]]


def recist_response(baseline_diameters_mm: dict[int, float], followup_diameters_mm: dict[int, float],
                    new_lesions: int = 0, *, max_targets: int = MAX_TARGETS_PER_ORGAN,
                    measurable_mm: float = MEASURABLE_MM) -> RecistResult:
    """Response from each baseline lesion's diameter then and its follow-up diameter (0 = gone)."""
    targets = choose_targets(baseline_diameters_mm, max_targets, measurable_mm)
    non_targets = [i for i in baseline_diameters_mm if i not in targets]
    base = sum(baseline_diameters_mm[i] for i in targets)
    follow = sum(followup_diameters_mm.get(i, 0.0) for i in targets)
    change = (follow - base) / base * 100.0 if base > 0 else None

    target = None
    if targets:
        if all(followup_diameters_mm.get(i, 0.0) == 0.0 for i in targets):
            target = "CR"
        elif follow <= base * (1 - PR_DECREASE):
            target = "PR"
        elif follow >= base * (1 + PD_INCREASE) and follow - base >= PD_ABSOLUTE_MM:
            target = "PD"
        else:
            target = "SD"
    non_target = None
    if non_targets:
        non_target = "CR" if all(followup_diameters_mm.get(i, 0.0) == 0.0 for i in non_targets) else "non-CR/non-PD"

    if new_lesions > 0:
        response, reason = "PD", f"{new_lesions} new lesion(s)"
    elif target == "PD":
        response, reason = "PD", f"sum of target diameters up {change:.1f} % ({follow - base:+.1f} mm)"
    elif target == "CR":
        response = "CR" if non_target in (None, "CR") else "PR"
        reason = "all target lesions gone" + ("" if response == "CR" else ", non-target disease remains")
    elif target == "PR":
        response, reason = "PR", f"sum of target diameters down {-change:.1f} %"
    elif target == "SD":
        response, reason = "SD", f"sum of target diameters changed {change:+.1f} %"
    elif non_target is not None:
        response, reason = non_target, "no target lesion at baseline; non-target lesions only"
    else:
        response, reason = "NE", "no lesion at baseline and none new"
    return RecistResult(response=response, target_response=target, non_target_response=non_target,
                        target_ids=targets, sum_baseline_mm=float(base), sum_followup_mm=float(follow),
                        change_percent=change, new_lesions=int(new_lesions), reason=reason)
