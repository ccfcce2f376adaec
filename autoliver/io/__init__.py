"""Medical image I/O: NIfTI, NRRD, MHA/MHD and DICOM series in; the input's format and geometry out."""
from autoliver.io.images import (  # noqa: F401
    SUPPORTED_ENDINGS,
    Geometry,
    Image,
    file_ending,
    read_image,
    write_image,
    write_like,
)
