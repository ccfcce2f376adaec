"""A one-page HTML summary of an evaluation: tables and embedded pictures, no external resource,
so it opens offline and can be mailed as one file."""
from __future__ import annotations

import base64
import html

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.case{margin:18px 0}.case img{max-width:100%;border:1px solid #ddd}
.note{font-size:12px;color:#555;max-width:900px}
"""


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def summary_html(summary, pictures: dict[str, bytes] | None = None, *, title: str = "autoliver evaluation") -> str:
    """The page: region means and global Dice, lesion detection, tumour burden, one row per case,
    then each case's overview picture (PNG as a data: URI)."""
    pictures = pictures or {}
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{summary.num_cases} case(s). NSD tolerance {summary.settings.nsd_tolerance_mm:g} mm.</p>"]
    metrics = ["dice", "iou", "precision", "recall", "rvd", "assd_mm", "msd_mm", "hd95_mm", "nsd"]
    parts.append("<h2>Segmentation (mean over cases)</h2>")
    parts.append(_table(["region", "Dice global", *metrics],
                        [[name, r.dice_global, *(r.mean[m] for m in metrics)] for name, r in summary.regions.items()]))
    if summary.lesion_detection:
        parts.append("<h2>Lesion detection (pooled over cases)</h2>")
        rows = []
        for rule, d in summary.lesion_detection.items():
            for size in ("all", "small", "large"):
                c = getattr(d, size)
                rows.append([rule, size, c.tp, c.fp, c.fn, c.precision, c.recall, c.f1,
                             d.mean_dice_detected if size == "all" else None])
        header = ["rule", "lesions", "TP", "FP", "FN", "precision", "recall", "F1", "Dice of detected"]
        parts.append(_table(header, rows))
    if summary.tumour_burden is not None and summary.tumour_burden.num_cases:
        tb = summary.tumour_burden
        parts.append(f"<p>Tumour burden: RMSE {_fmt(tb.rmse, 4)}, max |error| {_fmt(tb.max_abs_error, 4)} "
                     f"over {tb.num_cases} case(s).</p>")
    parts.append("<h2>Cases</h2>")
    names = list(summary.regions)
    header = ["case", *(f"{n} Dice" for n in names), *(f"{n} ASSD mm" for n in names), *(f"{n} HD95 mm" for n in names),
              "lesions ref", "lesions pred", "TP (IoU>0.5)", "TP (Dice>0.2)"]
    rows = []
    for c in summary.cases:
        le = c.lesions
        rows.append([c.case, *(c.regions[n].dice for n in names), *(c.regions[n].assd_mm for n in names),
                     *(c.regions[n].hd95_mm for n in names),
                     le.num_reference if le else None, le.num_prediction if le else None,
                     le.rules["iou>0.5"].all.tp if le else None, le.rules["dice>0.2"].all.tp if le else None])
    parts.append(_table(header, rows))
    for case, png in pictures.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<div class='case'><h3>{html.escape(case)}</h3>"
                     f"<img alt='{html.escape(case)} overview' src='data:image/png;base64,{data}'></div>")
    parts.append(f"<h2>Conventions</h2><p class='note'>{html.escape(summary.conventions)}</p></body></html>\n")
    return "".join(parts)
