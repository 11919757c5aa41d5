"""Running exported or in-memory networks: ONNX Runtime sessions and the sampling backends.

``export`` verifies its graphs with :func:`create_session`; ``sample`` runs a :class:`Backend`. Both import
from here, so neither imports the other's internals.
"""

from meddiff_cli.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "backend": ["Backend"],
    "choice": ["RuntimeChoice", "choose_runtime"],
    "onnx": ["CPU_PROVIDER", "CUDA_PROVIDER", "OnnxBackend", "create_session"],
    "pytorch": ["TorchBackend", "TorchLabelMap"],
})
