"""``meddiff sample``: synthetic volumes from a trained model (see :mod:`meddiff_cli.sample.pipeline`)."""

from meddiff_cli.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "options": ["SampleOptions", "SampleProgress", "SampleResult"],
    "backends": ["make_backend", "resolve_runtime"],
    "pipeline": ["sample_volumes"],
    "seeds": ["initial_noise", "parse_shard", "volume_seed"],
})
