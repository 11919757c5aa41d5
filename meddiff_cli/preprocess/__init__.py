"""``meddiff preprocess``: scans of any orientation, spacing and format onto one grid and intensity scale.

* :mod:`~meddiff_cli.preprocess.settings` -- :class:`PreprocessSettings` and the defaults (no numpy);
* :mod:`~meddiff_cli.preprocess.transform` -- the per-case transform (:func:`harmonise_volume`) and its inverse
  intensity mapping (:func:`invert_intensity`);
* :mod:`~meddiff_cli.preprocess.manifest` -- the ``meddiff-preprocess`` manifest (:func:`load_manifest`);
* :mod:`~meddiff_cli.preprocess.pipeline` -- running it over a corpus (:func:`preprocess_cases`).
"""

from meddiff_cli.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "manifest": ["ERRORS_NAME", "FORMAT", "FORMAT_VERSION", "MANIFEST_NAME", "load_manifest", "settings_from_manifest",
                 "validate_manifest"],
    "pipeline": ["PreprocessResult", "preprocess_cases"],
    "settings": ["DEFAULT_PERCENTILES", "DEFAULT_SIZE", "DEFAULT_SPACING_MM", "DEFAULT_WINDOW_HU", "PreprocessSettings"],
    "transform": ["harmonise_label", "harmonise_volume", "invert_intensity", "reorient_to_ras", "resample_to_grid",
                  "target_grid"],
})
