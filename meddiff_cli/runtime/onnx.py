"""ONNX Runtime: sessions (also used by ``export`` to verify its graphs) and the sampling backend auto picks on CUDA.

:class:`OnnxBackend` runs ``onnx/denoiser.<prec>.onnx`` and ``onnx/decoder.<prec>.onnx``; it keeps the latent on
the GPU with IO binding on torch-owned CUDA buffers when torch has CUDA, otherwise it feeds numpy.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from meddiff_cli.devices import DeviceRequest, check_cuda_index, cpu_threads, parse_device
from meddiff_cli.errors import DeviceError

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


@contextmanager
def _quiet_ort(enabled: bool) -> Iterator[None]:
    """Silence ORT's provider-loading errors while probing CUDA (auto falls back; cuda fails in one line)."""
    import onnxruntime as ort

    if not enabled:
        yield
        return
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)


def create_session(path: str | Path | bytes, device: str | DeviceRequest = "cpu", cuda_stream: int | None = None,
                   threads: int | None = None):
    """An ORT session with full graph optimisation; returns (session, provider actually used).

    CPU tuning (benchmarks/sample_speed.py on MONAI's 3D UNet): ``ORT_ENABLE_ALL`` beat EXTENDED and BASIC by
    10-20 %; sequential execution (the graph is one chain); ``threads`` intra-op threads (default: every core this
    process may use) without spin-waiting, which on a shared machine cost 30 % and burns cores others need.

    ``path`` may be the graph's bytes, already sha256-verified (see :func:`meddiff_cli.model.store.read_verified`).

    ``cuda_stream`` (a ``cudaStream_t`` as int) makes ORT run on torch's stream, so IO-bound torch buffers
    are ordered with the torch ops around each call without device-wide synchronisation.

    CUDA uses ``cudnn_conv_algo_search=HEURISTIC``: the DEFAULT search ran 3D convolutions 4-7x slower on an
    H100. ORT silently falls back to CPU when CUDA libraries are missing, so ``--device cuda`` checks the
    providers the session really got and raises DeviceError (exit 7) otherwise.
    """
    import onnxruntime as ort

    request = parse_device(device)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or cpu_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list = [CPU_PROVIDER]
    available = ort.get_available_providers()
    if request.wants_cuda and CUDA_PROVIDER in available:
        cuda_options = {"device_id": request.cuda_index, "cudnn_conv_algo_search": "HEURISTIC"}
        if cuda_stream is not None:
            cuda_options.update(has_user_compute_stream="1", user_compute_stream=str(cuda_stream))
        providers = [(CUDA_PROVIDER, cuda_options), CPU_PROVIDER]
    elif request.kind == "cuda":
        raise DeviceError(f"--device cuda: this onnxruntime build has no CUDA provider (providers: {', '.join(available)}); "
                          "install onnxruntime-gpu or use --device cpu")
    with _quiet_ort(request.kind != "cpu"):  # a failed CUDA probe is reported below, in one line
        model = path if isinstance(path, bytes) else str(path)
        session = ort.InferenceSession(model, options, providers=providers)
    used = session.get_providers()
    if request.kind == "cuda" and CUDA_PROVIDER not in used:
        raise DeviceError(
            "--device cuda: ONNX Runtime could not start its CUDA provider (CUDA/cuDNN libraries missing or no GPU) "
            "and would silently run on CPU; use --device cpu or fix the CUDA installation"
        )
    return session, used[0]


def _ort_type(dtype: torch.dtype) -> type:
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}[dtype]


class OnnxBackend:
    """Runs ``onnx/denoiser.<prec>.onnx`` and ``onnx/decoder.<prec>.onnx`` with ONNX Runtime."""

    name = "onnx"

    def __init__(self, denoiser_path: Path | bytes, decoder_path: Path | bytes, device: str, precision: str,
                 threads: int | None = None) -> None:
        request = parse_device(device)
        check_cuda_index(request)
        stream = None
        if request.wants_cuda and torch.cuda.is_available():
            stream = torch.cuda.current_stream(request.cuda_index).cuda_stream
        self.denoiser, self.provider = create_session(denoiser_path, request, stream, threads)
        self.decoder, _ = create_session(decoder_path, request, stream, threads)
        self.precision = self.precision_label = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        on_gpu = self.provider == CUDA_PROVIDER
        # IO binding needs CUDA memory we own; a CPU-only torch build feeds numpy (ORT copies per call).
        self.bind = on_gpu and torch.cuda.is_available()
        self.device_index = request.cuda_index
        self.torch_device = torch.device("cuda", request.cuda_index) if self.bind else torch.device("cpu")
        self.device_label = f"cuda:{request.cuda_index}" if on_gpu else "cpu"

    def denoise(self, latent: torch.Tensor, timestep: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        inputs = {"latent": latent.to(self.dtype).contiguous(), "timestep": timestep.float().contiguous(),
                  "class_id": class_id.long().contiguous()}
        return self._run(self.denoiser, inputs, "velocity", tuple(latent.shape)).float()

    def decode(self, latent: torch.Tensor, volume_shape: tuple[int, ...]) -> torch.Tensor:
        shape = (latent.shape[0], 1, *volume_shape)
        return self._run(self.decoder, {"latent": latent.to(self.dtype).contiguous()}, "volume", shape).float()

    def _run(self, session, inputs: dict[str, torch.Tensor], output: str, shape: tuple[int, ...]) -> torch.Tensor:
        if not self.bind:
            feeds = {name: tensor.cpu().numpy() for name, tensor in inputs.items()}
            return torch.from_numpy(session.run([output], feeds)[0])
        binding = session.io_binding()
        for name, tensor in inputs.items():
            binding.bind_input(name, "cuda", self.device_index, _ort_type(tensor.dtype), tuple(tensor.shape),
                               tensor.data_ptr())
        result = torch.empty(shape, dtype=self.dtype, device=self.torch_device)
        binding.bind_output(output, "cuda", self.device_index, _ort_type(self.dtype), shape, result.data_ptr())
        session.run_with_iobinding(binding)
        return result
