"""``meddiff preprocess``: scans of any orientation, spacing and format onto one grid and intensity scale.

* :mod:`~meddiff_cli.preprocess.transform` -- the per-case transform (:func:`harmonise_volume`) and its inverse
  intensity mapping (:func:`invert_intensity`);
* :mod:`~meddiff_cli.preprocess.manifest` -- the ``meddiff-preprocess`` manifest (:func:`load_manifest`);
* :mod:`~meddiff_cli.preprocess.pipeline` -- running it over a corpus (:func:`preprocess_cases`).
"""

from meddiff_cli.preprocess.manifest import (
    ERRORS_NAME,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    load_manifest,
    settings_from_manifest,
    validate_manifest,
)
from meddiff_cli.preprocess.pipeline import PreprocessResult, preprocess_cases
from meddiff_cli.preprocess.transform import (
    DEFAULT_PERCENTILES,
    DEFAULT_SIZE,
    DEFAULT_SPACING_MM,
    DEFAULT_WINDOW_HU,
    PreprocessSettings,
    harmonise_label,
    harmonise_volume,
    invert_intensity,
    reorient_to_ras,
    resample_to_grid,
    target_grid,
)

__all__ = [
    "ERRORS_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "DEFAULT_PERCENTILES",
    "DEFAULT_SIZE",
    "DEFAULT_SPACING_MM",
    "DEFAULT_WINDOW_HU",
    "PreprocessResult",
    "PreprocessSettings",
    "harmonise_label",
    "harmonise_volume",
    "invert_intensity",
    "load_manifest",
    "preprocess_cases",
    "reorient_to_ras",
    "resample_to_grid",
    "settings_from_manifest",
    "target_grid",
    "validate_manifest",
]
