"""One ``--device auto|cpu|cuda|cuda:N`` for every computing command (train, sample, evaluate, augment-seg).

Same rules everywhere: ``auto`` is CUDA when torch sees a GPU, else CPU; ``cuda``/``cuda:N`` without that GPU is a
:class:`DeviceError` (exit 7) instead of a silent fall-back to CPU; anything else is a :class:`UsageError` (exit 2).
Under ``torchrun`` ``auto``/``cuda`` mean the process's own local GPU (``LOCAL_RANK``). ONNX Runtime decides CUDA
by its own providers, so the sampler parses here and checks the provider it really got (``runtime.onnx``).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meddiff_cli.errors import DeviceError, UsageError
from meddiff_cli.paths import torchrun_launch

if TYPE_CHECKING:  # torch is imported where a device is resolved, so that parsing --device stays instant
    import torch

CHOICES_HELP = "auto, cpu, cuda or cuda:N"


@dataclass(frozen=True)
class DeviceRequest:
    """A parsed ``--device``: kind is auto|cpu|cuda; index is the CUDA ordinal (None: the default one)."""

    kind: str
    index: int | None = None

    @property
    def wants_cuda(self) -> bool:
        return self.kind in {"auto", "cuda"}

    @property
    def cuda_index(self) -> int:
        """The ordinal to use: explicit ``cuda:N``, else this torchrun process's local rank, else 0."""
        if self.index is not None:
            return self.index
        launch = torchrun_launch()
        return launch.local_rank if launch.distributed else 0

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" and self.index is not None else self.kind


def parse_device(text: str | DeviceRequest | None) -> DeviceRequest:
    """Syntax only (no GPU probing): a bad string is a usage error, caught before any work starts."""
    if isinstance(text, DeviceRequest):
        return text
    spec = (text or "auto").strip().lower()
    if spec in {"auto", "cpu", "cuda"}:
        return DeviceRequest(spec)
    if spec.startswith("cuda:") and spec[5:].isdigit():
        return DeviceRequest("cuda", int(spec[5:]))
    raise UsageError(f"invalid --device {text!r}: use {CHOICES_HELP}")


def check_cuda_index(request: DeviceRequest) -> None:
    """``cuda:N`` beyond the GPUs torch can see is a device error, not a crash later on."""
    import torch

    if request.kind == "cuda" and torch.cuda.is_available() and request.cuda_index >= torch.cuda.device_count():
        raise DeviceError(f"--device {request}: only {torch.cuda.device_count()} CUDA device(s) visible")


def resolve_device(text: str | DeviceRequest | None) -> torch.device:
    """The torch device a ``--device`` value means here and now (see the module docstring for the rules)."""
    import torch

    request = parse_device(text)
    if request.kind == "cpu" or (request.kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {request}: PyTorch sees no CUDA GPU (CPU-only build, no driver or "
                          "CUDA_VISIBLE_DEVICES empty); use --device cpu")
    check_cuda_index(request)
    torch.cuda.set_device(request.cuda_index)
    return torch.device("cuda", request.cuda_index)


def cpu_threads() -> int:
    """Cores this process may use (respects taskset/cgroups affinity, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class CpuClock:
    """Idle time of this process's CPUs and this process's own CPU time at one moment (see :func:`free_cores`)."""

    wall: float
    idle: float | None  # seconds idle summed over the CPUs in our affinity; None where /proc/stat is missing
    own: float

    @classmethod
    def now(cls) -> CpuClock:
        return cls(time.monotonic(), _idle_seconds(), time.process_time())


def free_cores(since: CpuClock, minimum_window_s: float = 0.05) -> float | None:
    """Cores other processes left free since ``since``: (idle time + our own CPU time) / wall time.

    A 2-core machine running a 1-core training job answers ~1; idle, ~2. None when unknown (not Linux, or a
    window too short to measure with the kernel's 10 ms ticks). Why it matters: OpenMP and ONNX Runtime
    threads that share a core with another busy process wait for each other at every barrier; on this
    project's loaded 2-core machine two threads ran the denoiser 5-20x slower than one.
    """
    now = CpuClock.now()
    window = now.wall - since.wall
    if since.idle is None or now.idle is None or window < minimum_window_s:
        return None
    return max(0.0, (now.idle - since.idle) + (now.own - since.own)) / window


def _idle_seconds() -> float | None:
    try:
        allowed = os.sched_getaffinity(0)
        with open("/proc/stat", encoding="ascii") as handle:
            lines = handle.read().splitlines()
    except (AttributeError, OSError):
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in allowed and len(fields) >= 5:
            ticks += int(fields[3]) + int(fields[4])  # idle + iowait
    return ticks / os.sysconf("SC_CLK_TCK")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when this CPU computes bf16 natively (AMX or AVX512-BF16): there bf16 autocast is ~2.5x faster
    than fp32 for the 3D convolutions; elsewhere torch emulates bf16 and it is slower. Linux reads
    /proc/cpuinfo; other systems answer False (fp32 is always correct)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def inference_autocast(device: torch.device | str) -> Any:
    """bf16 autocast for inference where bf16 is the fast path (CUDA, CPUs with AMX/AVX512-BF16); a no-op elsewhere."""
    import torch

    device = torch.device(device)
    fast = device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast)


def describe_device(device: torch.device | str) -> str:
    """Human label for the 'running on …' line: the GPU's name, or the CPU threads torch uses."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({torch.get_num_threads()} threads)"
