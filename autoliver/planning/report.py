"""The decisions of a plan as a table for people (``autoliver plan`` prints it)."""
from __future__ import annotations

from autoliver.planning.plan import Plan

ROWS = (
    ("spacing (z,y,x) mm", lambda c: "×".join(f"{s:.3g}" for s in c.spacing_zyx_mm)),
    ("median shape", lambda c: "×".join(map(str, c.median_shape_zyx))),
    ("patch", lambda c: "×".join(map(str, c.patch_size))),
    ("batch", lambda c: str(c.batch_size)),
    ("stages", lambda c: str(len(c.network.strides))),
    ("features", lambda c: f"{c.network.features_per_stage[0]}…{c.network.features_per_stage[-1]}"),
    ("network", lambda c: c.network.architecture + (f" ×{c.phases} phases" if c.phases > 1 else "")),
    ("normalisation", lambda c: ",".join(sorted({n.scheme for n in c.normalization}))),
    ("separate z", lambda c: "yes" if c.resampling.separate_z else "no"),
    ("denoise", lambda c: f"σ {c.denoise.range_sigma:g}" if c.denoise.enabled else "no"),
    ("memory GiB", lambda c: f"{c.estimated_memory_bytes / 2**30:.2f}"),
    ("s / iteration", lambda c: f"{c.estimated_seconds_per_iteration:.2f}" if c.estimated_seconds_per_iteration else "-"),
    ("data", lambda c: c.data_identifier),
)


def plan_table(plan: Plan, *, reasons: bool = True) -> str:
    names = list(plan.configurations)
    cells = [[label] + [fn(plan.configurations[n]) for n in names] for label, fn in ROWS]
    header = [""] + names
    widths = [max(len(r[i]) for r in [header] + cells) for i in range(len(header))]
    lines = [f"{plan.dataset_name}: preset {plan.preset}, planned for {plan.device}, "
             f"{plan.memory_budget_bytes / 2**30:.2f} GiB usable"]
    fmt = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()  # noqa: E731
    lines += [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells]
    if reasons:
        lines.append("")
        lines += [f"{k}: {v}" for k, v in plan.reasons.items()]
        for n in names:
            lines.append(f"\n{n}:")
            lines += [f"  {k}: {v}" for k, v in plan.configurations[n].reasons.items()]
    return "\n".join(lines)
