"""The procedural demo stand-in for SICAPv2 (the machines this project is built on cannot download it).

:mod:`~discnb.data.demo.dataset` plans and writes a folder in SICAPv2's on-disk layout
(:func:`make_demo_sicap`); :mod:`~discnb.data.demo.check` checks a written folder (:func:`validity_report`,
:func:`preview_grid`). The tissue: :mod:`~discnb.data.demo.tissue` renders tiles and annotation masks with the
stain model of :mod:`~discnb.data.demo.stain` and the per-grade textures of :mod:`~discnb.data.demo.textures`,
built from the shape primitives of :mod:`~discnb.data.demo.geometry`.
"""

from discnb.data.demo.check import preview_grid, validity_report
from discnb.data.demo.dataset import GENERATOR_VERSION, make_demo_sicap, slide_label_frequencies
from discnb.data.demo.tissue import DOMAINS, default_stain, make_stain, random_annotation_mask, render_tile

__all__ = ["make_demo_sicap", "slide_label_frequencies", "GENERATOR_VERSION", "validity_report", "preview_grid",
           "render_tile", "random_annotation_mask", "make_stain", "default_stain", "DOMAINS"]
