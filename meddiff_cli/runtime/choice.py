"""What ``--backend auto`` / ``--precision auto`` / ``--threads`` mean on this machine, decided before loading.

The rules come from ``benchmarks/sample_speed.py`` (numbers in docs/sampling.md, "Choosing the backend"):

* CPU: PyTorch. With AMX or AVX512-BF16 (:func:`~meddiff_cli.devices.cpu_has_fast_bf16`) bf16 autocast, which
  ran the denoiser ~2x and the decoder ~3x faster than fp32 (ONNX Runtime or torch); elsewhere fp32, where
  torch's oneDNN convolutions were as fast as or faster than ONNX Runtime's tuned CPU provider at batch >= 4,
  and need no ONNX export on first use.
* CUDA: ONNX Runtime's CUDA provider in fp16 with IO binding, the designed GPU path; PyTorch fp16 when this
  onnxruntime build has no CUDA provider.
* An ONNX-only model folder (no weights) can only run ONNX Runtime, in a precision whose graphs it holds.

Threads: the cores other processes leave free (measured over the seconds the model takes to load, see
:func:`~meddiff_cli.devices.free_cores`), because threads sharing a busy core stall each other at every barrier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from meddiff_cli.devices import CpuClock, DeviceRequest, cpu_has_fast_bf16, cpu_threads, free_cores
from meddiff_cli.errors import UsageError

AUTO = "auto"
MEASURE_S = 0.1  # shortest window over which free cores are measured

PARITY_BOUNDS = {"fp32": (1e-4, 1e-3), "fp16": (2e-3, 2e-2), "bf16": (5e-3, 5e-2)}
"""What each precision is held to against fp32 PyTorch on the same noise: (mean, max) of |difference| of the
decoded volumes in model space (1.0 = half the intensity window, i.e. 1000 HU for CT). Tested on a tiny model
(tests/test_sample_backends.py), measured on the bundled one by benchmarks/sample_speed.py."""


@dataclass(frozen=True)
class RuntimeChoice:
    """The backend and precision a run uses, and why (for the manifest and the 'running on' line)."""

    backend: str  # onnx | torch
    precision: str  # fp32 | fp16 | bf16 (bf16: torch autocast; weights stay fp32)
    cuda: bool
    reason: str


def choose_runtime(backend: str, precision: str, request: DeviceRequest, has_weights: bool,
                   onnx_precisions: set[str]) -> RuntimeChoice:
    """Resolve ``auto`` backend and precision (explicit ones are kept, or refused when they cannot run here).

    ``onnx_precisions``: precisions whose graphs the model folder already holds (others are exported on first
    use when ``has_weights``).
    """
    cuda, ort_cuda = _cuda(request)
    fast_bf16 = cpu_has_fast_bf16()
    why: list[str] = []
    if backend == AUTO:
        if not has_weights:
            backend, note = "onnx", "ONNX-only model folder"
        elif cuda:
            backend, note = ("onnx", "CUDA") if ort_cuda else ("torch", "CUDA, onnxruntime without CUDA provider")
        else:
            backend, note = "torch", "CPU"
        why.append(f"backend auto: {note}")
    if backend == "torch" and not has_weights:
        raise UsageError("--backend torch needs the model's weights; this folder holds only ONNX graphs "
                         "(use --backend onnx or auto)")
    if precision == AUTO:
        precision = _auto_precision(backend, cuda, fast_bf16, has_weights, onnx_precisions)
        why.append(f"precision auto: {precision}" + (" (CPU with AMX/AVX512-BF16)" if precision == "bf16" and not cuda
                                                       else ""))
    if precision == "bf16" and backend == "onnx":
        raise UsageError("--precision bf16 runs in PyTorch (ONNX Runtime's CPU provider has no bf16 convolutions); "
                         "use --backend torch or --backend auto")
    if backend == "onnx" and precision not in onnx_precisions and not has_weights:
        held = ", ".join(sorted(onnx_precisions)) or "none"
        raise UsageError(f"--precision {precision}: this ONNX-only model folder holds graphs for {held} and no "
                         "weights to export others from")
    return RuntimeChoice(backend, precision, cuda, "; ".join(why))


def choose_threads(requested: int | None, since: CpuClock) -> tuple[int, str]:
    """CPU threads for torch and ONNX Runtime: ``requested``, else the cores free since ``since`` (all of them
    when that cannot be measured); and a note saying which.

    A window shorter than :data:`MEASURE_S` (a library caller whose imports were done long ago) is waited out:
    the kernel counts idle time in 10 ms ticks, and a guess of "all cores" on a busy machine costs 5-20x.
    """
    if requested is not None:
        if requested < 1:
            raise UsageError(f"--threads must be at least 1, got {requested}")
        return requested, f"threads {requested} (requested)"
    wait = since.wall + MEASURE_S - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    free = free_cores(since)
    if free is None:
        return cpu_threads(), f"threads auto: all {cpu_threads()}"
    threads = max(1, min(cpu_threads(), round(free)))
    return threads, f"threads auto: {threads} of {cpu_threads()} ({free:.1f} cores free)"


def _auto_precision(backend: str, cuda: bool, fast_bf16: bool, has_weights: bool, onnx_precisions: set[str]) -> str:
    if backend == "torch":
        return "fp16" if cuda else ("bf16" if fast_bf16 else "fp32")
    preferred = ["fp16", "fp32"] if cuda else ["fp32", "fp16"]
    if has_weights:
        return preferred[0]
    return next((p for p in preferred if p in onnx_precisions), preferred[0])


def _cuda(request: DeviceRequest) -> tuple[bool, bool]:
    """(whether this run is on a CUDA GPU, whether ONNX Runtime can run there). ``--device cuda`` without a GPU
    is reported by the backend itself (exit 7), so it counts as CUDA here."""
    if request.kind == "cpu":
        return False, False
    import torch

    cuda = request.kind == "cuda" or torch.cuda.is_available()
    if not cuda:
        return False, False
    import onnxruntime as ort

    return True, "CUDAExecutionProvider" in ort.get_available_providers()
