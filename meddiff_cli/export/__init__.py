"""``meddiff export``: the sampler's denoiser and decoder as ONNX graphs, verified against PyTorch."""

from meddiff_cli.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "options": ["DEFAULT_OPSET", "DEFAULT_PRECISION", "PRECISIONS", "TOLERANCE", "check_precision", "onnx_files"],
    "graphs": ["ExportResult", "ensure_onnx", "export_model", "graph_files", "has_onnx"],
})
