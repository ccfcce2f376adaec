"""autoliver: self-configuring liver and liver-tumour segmentation for CT and DCE-MRI.

Arrays inside the pipeline are (z, y, x) — or (channel, z, y, x) — and spacings are given in mm in
the same order (``spacing_zyx_mm``) unless a name says otherwise. Geometry read from files keeps
ITK's (x, y, z) order in :class:`autoliver.io.Geometry` so it can be written back exactly.
"""
__version__ = "0.1.0"
