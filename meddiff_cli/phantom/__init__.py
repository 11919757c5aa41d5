"""Procedural labelled CT chest and MRI brain phantoms: demo, test and training data of meddiff."""

from meddiff_cli.phantom.corpus import write_phantom_corpus
from meddiff_cli.phantom.generate import LABELS, generate_phantom, phantom_geometry

__all__ = ["LABELS", "generate_phantom", "phantom_geometry", "write_phantom_corpus"]
