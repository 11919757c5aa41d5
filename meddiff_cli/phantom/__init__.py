"""Procedural labelled CT chest and MRI brain phantoms: demo, test and training data of meddiff."""

from meddiff_cli.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "corpus": ["write_phantom_corpus"],
    "generate": ["LABELS", "generate_phantom", "phantom_geometry"],
})
