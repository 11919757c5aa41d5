"""``meddiff evaluate``: compare a synthetic set with real volumes (see :mod:`meddiff_cli.evaluate.pipeline`).

* :mod:`~meddiff_cli.evaluate.options` -- :class:`EvaluateOptions`, the one home of the defaults;
* :mod:`~meddiff_cli.evaluate.grid` -- the harmonisation grid, taken from the data;
* :mod:`~meddiff_cli.evaluate.loading` -- inputs to harmonised volume sets;
* :mod:`~meddiff_cli.evaluate.features`, :mod:`~meddiff_cli.evaluate.radiomics`, :mod:`~meddiff_cli.evaluate.frd`
  -- feature extractors and FRDv1;
* :mod:`~meddiff_cli.evaluate.metrics`, :mod:`~meddiff_cli.evaluate.sections` -- the set-level metrics;
* :mod:`~meddiff_cli.evaluate.anatomy`, :mod:`~meddiff_cli.evaluate.segmenter` -- the anatomy check;
* :mod:`~meddiff_cli.evaluate.memorization`, :mod:`~meddiff_cli.evaluate.verdict`;
* :mod:`~meddiff_cli.evaluate.report`, :mod:`~meddiff_cli.evaluate.plots` -- ``--report DIR``.
"""

from meddiff_cli.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "options": ["EvaluateOptions"],
    "pipeline": ["REPORT_FORMAT", "EvaluationResult", "evaluate_folders"],
})
