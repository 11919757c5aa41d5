"""Export settings and graph names: what ``meddiff export`` and ``meddiff sample --precision`` accept (no torch)."""

from __future__ import annotations

from meddiff_cli.errors import UsageError

PRECISIONS = ("fp32", "fp16")
DEFAULT_PRECISION = "fp32"
TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2}
"""Largest relative error ||onnx - torch fp32|| / ||torch fp32|| an exported graph may have."""
DEFAULT_OPSET = 18
GRAPH_REVISION = 2
"""What the exported graphs compute; recorded in the card (``sampling.onnx_graph_revision``) at export. Graphs of
an older revision are exported again on first use where the weights are at hand. 2: the decoder repairs the
volume box's edges (``repair_box_edges``)."""


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def onnx_files(precision: str, own_decoder: str | None = None) -> tuple[str, str]:
    """Card-relative names of the (denoiser, decoder) graphs for a precision; ``own_decoder``: a modality that
    decodes with a decoder of its own (``ModelCard.own_decoder``)."""
    check_precision(precision)
    decoder = f"decoder_{own_decoder}" if own_decoder else "decoder"
    return f"onnx/denoiser.{precision}.onnx", f"onnx/{decoder}.{precision}.onnx"
