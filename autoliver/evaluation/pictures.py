"""Drawing slices with outlined labels (matplotlib's Agg canvas; no display, no global backend).

Volumes are first turned to one display orientation whatever the file's: (z, y, x) with z towards
the head, y towards the back and x towards the patient's left (ITK's LPS). Views then follow the
radiological convention: axial slices seen from the feet (patient's right on the left of the
picture, front at the top), coronal from the front (patient's right on the left), sagittal with the
face to the left; head up; pixels keep their physical aspect ratio.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from autoliver.io.orientation import canonical_axes, canonical_zyx, to_canonical

VIEWS = ("axial", "coronal", "sagittal")
STRUCTURE_COLOURS = {"liver": "#2ecc40", "tumour": "#ff4136"}
CT_WINDOW_HU = (-160.0, 240.0)  # abdominal soft-tissue window, level 40 HU, width 400 HU


@dataclass(frozen=True)
class Oriented:
    """A volume in display orientation and its spacing in the same (z, y, x) order."""

    array: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]


def orientation_permutation(direction) -> tuple[list[int], list[bool]]:
    """For each display axis (z, y, x = S, P, L), the source array axis and whether to flip it."""
    o = canonical_axes(direction)
    return o["axes"], o["flip"]


def to_display(array: np.ndarray, spacing_zyx_mm, direction) -> Oriented:
    o = canonical_axes(direction)
    return Oriented(np.ascontiguousarray(to_canonical(array, o)),
                    tuple(float(s) for s in canonical_zyx(spacing_zyx_mm, o)))


def window(image: np.ndarray) -> tuple[float, float]:
    """Display range: the abdominal CT window for HU data, else the 0.5–99.5 percentiles."""
    if float(np.min(image)) < -500:  # air at about -1000: Hounsfield units, a CT
        return CT_WINDOW_HU
    p = np.percentile(image[:: max(1, image.size // 2_000_000)], [0.5, 99.5]) if image.size else (0.0, 1.0)
    return float(p[0]), float(max(p[1], p[0] + 1e-6))


def view(volume: np.ndarray, spacing_zyx_mm, name: str, index: int) -> tuple[np.ndarray, float]:
    """The 2D picture of one view through ``index`` and its aspect (row mm / column mm)."""
    sz, sy, sx = spacing_zyx_mm
    if name == "axial":
        return volume[index], sy / sx
    if name == "coronal":
        return volume[::-1, index, :], sz / sx
    if name == "sagittal":
        return volume[::-1, :, index], sz / sy
    raise ValueError(f"view must be one of {VIEWS}, got {name!r}")


def view_index(name: str, point_zyx) -> int:
    return int(round(point_zyx[VIEWS.index(name)]))


@dataclass(frozen=True)
class Outline:
    """A mask (display orientation, same grid as the picture) drawn as a contour."""

    mask: np.ndarray
    colour: str
    label: str
    style: str = "solid"


def draw_view(ax, name: str, point_zyx, spacing_zyx_mm, *, image: np.ndarray | None, outlines: list[Outline],
              title: str = "", line=None) -> list:
    """Draw one view through ``point_zyx`` on ``ax``: the image (or the outlined masks filled grey
    on black when there is no image), then each outline, then an optional axial segment
    ``line`` = ((row, col), (row, col)) in pixel coordinates (a RECIST diameter)."""
    from matplotlib.lines import Line2D

    shape = image.shape if image is not None else outlines[0].mask.shape
    index = int(np.clip(view_index(name, point_zyx), 0, shape[VIEWS.index(name)] - 1))
    if image is not None:
        picture, aspect = view(image, spacing_zyx_mm, name, index)
        lo, hi = window(image)
        ax.imshow(picture, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=aspect)
    else:
        filled = np.zeros(shape, np.float32)
        for o in outlines:
            filled[o.mask] += 1.0
        picture, aspect = view(filled, spacing_zyx_mm, name, index)
        ax.imshow(picture, cmap="gray", vmin=0, vmax=max(3.0, len(outlines) + 1.0), interpolation="nearest",
                  aspect=aspect)
    handles = []
    for o in outlines:
        m, _ = view(o.mask, spacing_zyx_mm, name, index)
        if m.any():
            ax.contour(m.astype(np.float32), levels=[0.5], colors=[o.colour], linewidths=1.2, linestyles=o.style)
        handles.append(Line2D([0], [0], color=o.colour, linestyle=o.style, label=o.label))
    if line is not None and name == "axial":
        (r0, c0), (r1, c1) = line
        ax.plot([c0, c1], [r0, r1], color="#ffdc00", linewidth=1.5)
        handles.append(Line2D([0], [0], color="#ffdc00", label="longest diameter"))
    ax.set_title(title or f"{name} {index}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return handles


def new_figure(n_rows: int, n_cols: int, size_per_panel: float = 3.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(n_cols * size_per_panel, n_rows * size_per_panel), dpi=110, facecolor="white")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    return fig, axes


def png_bytes(fig, handles=(), title: str = "") -> bytes:
    """The figure as PNG, with one legend below the panels and a title above them."""
    bottom = 0.0
    if handles:
        unique = {h.get_label(): h for h in handles}
        fig.legend(handles=list(unique.values()), loc="lower center", ncol=min(len(unique), 5), fontsize=8,
                   frameon=False)
        bottom = 0.45 / fig.get_figheight()  # room for one row of legend, in figure units
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, bottom, 1, 0.94 if title else 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


