"""A raw dataset in nnU-Net v2's layout, plus autoliver's extension for DCE-MRI phases.

    DatasetNNN_Name/
      dataset.json                 channel_names, labels, numTraining, file_ending
      imagesTr/{case}_{c:04d}{ending}
      labelsTr/{case}{ending}
      imagesTs/{case}_{c:04d}{ending}    (optional)

DCE-MRI phases: either one channel per phase with ``"phases": ["pre", "arterial", "portal",
"delayed"]`` naming the channels in time order (``channel_names`` then has one entry per phase),
or one 4D file per case (``"phases_in_file": 4``: ``{case}_0000`` holds (t, z, y, x)).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from autoliver import paths
from autoliver.errors import UserError
from autoliver.schema import read_json

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
CT_NAMES = {"ct", "computed tomography"}


@dataclass(frozen=True)
class DatasetInfo:
    """What dataset.json declares, normalised."""

    folder: Path
    name: str
    channel_names: tuple[str, ...]  # index = channel number
    labels: dict[str, int]  # name → value; region-style lists are not used by autoliver
    num_training: int
    file_ending: str
    phases: tuple[str, ...] = ()  # DCE-MRI phase names in time order (channels), or ()
    phases_in_file: int = 0  # >0: each case is one 4D file with this many phases
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def modality(self) -> str:
        """'CT' when every channel is CT, else 'MRI' (normalisation follows from it)."""
        return "CT" if all(c.lower() in CT_NAMES for c in self.channel_names) else "MRI"

    @property
    def num_phases(self) -> int:
        return self.phases_in_file or len(self.phases) or 1

    @property
    def images_dir(self) -> Path:
        return self.folder / "imagesTr"

    @property
    def labels_dir(self) -> Path:
        return self.folder / "labelsTr"

    def image_files(self, case: str, folder: str = "imagesTr") -> list[Path]:
        return [self.folder / folder / f"{case}_{c:04d}{self.file_ending}" for c in range(len(self.channel_names))]

    def label_file(self, case: str) -> Path:
        return self.labels_dir / f"{case}{self.file_ending}"

    def training_cases(self) -> list[str]:
        """Case ids that have a label file, sorted."""
        return sorted(p.name[: -len(self.file_ending)] for p in self.labels_dir.glob(f"*{self.file_ending}")
                      if not p.name.startswith("."))

    def test_cases(self) -> list[str]:
        return cases_in_image_folder(self.folder / "imagesTs", self.file_ending)


def cases_in_image_folder(folder: Path, ending: str) -> list[str]:
    pat = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$")
    if not folder.is_dir():
        return []
    return sorted({m.group("case") for p in folder.iterdir() if (m := pat.match(p.name))})


def parse_dataset_json(folder: Path) -> DatasetInfo:
    """Read and validate ``folder/dataset.json``; all problems are reported together."""
    path = folder / "dataset.json"
    if not path.is_file():
        raise UserError(f"{path}: missing. A raw dataset needs a dataset.json (see README, 'Dataset format').")
    d = read_json(path)
    problems = [f"{path}: missing key {k!r}" for k in REQUIRED_KEYS if k not in d]
    if problems:
        raise UserError("; ".join(problems) + ". Add them as in nnU-Net v2's dataset.json.")
    ch = d["channel_names"]
    if not isinstance(ch, dict) or not ch:
        raise UserError(f"{path}: channel_names must be an object like {{\"0\": \"CT\"}}, got {ch!r}")
    try:
        channels = tuple(ch[str(i)] for i in range(len(ch)))
    except KeyError:
        raise UserError(f"{path}: channel_names keys must be 0..{len(ch) - 1}, got {sorted(ch)}") from None
    labels = d["labels"]
    if not isinstance(labels, dict) or labels.get("background") != 0:
        raise UserError(f"{path}: labels must map names to integers with background = 0, got {labels!r}")
    for name, v in labels.items():
        if not isinstance(v, int):
            raise UserError(f"{path}: labels.{name} must be an integer (region lists are not supported), got {v!r}")
    ending = d["file_ending"]
    if not isinstance(ending, str) or not ending.startswith("."):
        raise UserError(f"{path}: file_ending must look like '.nii.gz', got {ending!r}")
    phases = tuple(d.get("phases", ()))
    if phases and len(phases) != len(channels):
        raise UserError(f"{path}: 'phases' names {len(phases)} phases but channel_names has {len(channels)} "
                        "channels; declare one channel per phase.")
    return DatasetInfo(folder=folder, name=folder.name, channel_names=channels, labels=dict(labels),
                       num_training=int(d["numTraining"]), file_ending=ending, phases=phases,
                       phases_in_file=int(d.get("phases_in_file", 0)), raw=d)


def open_dataset(spec: str | None, raw_dir: str | None = None) -> DatasetInfo:
    """Resolve ``-d`` in the raw folder and parse its dataset.json."""
    root = paths.root("raw", raw_dir)
    name = paths.resolve_dataset(spec, root)
    folder = root / name
    if not folder.is_dir():
        raise UserError(f"-d {spec}: {folder} does not exist. Create it with make_synthetic, convert_lits or convert_msd.")
    return parse_dataset_json(folder)
