"""What ``meddiff sample`` is asked to do, what it reports, and the words its flags accept (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meddiff_cli.devices import parse_device
from meddiff_cli.errors import UsageError
from meddiff_cli.export.options import PRECISIONS as GRAPH_PRECISIONS
from meddiff_cli.modality import MODALITIES
from meddiff_cli.model.registry import DEFAULT_MODEL
from meddiff_cli.model.scheduler import SAMPLERS, check_sampler

BACKENDS = ("auto", "onnx", "torch")
PRECISIONS = ("auto", *GRAPH_PRECISIONS, "bf16")  # bf16: PyTorch autocast (no bf16 ONNX graphs)
FORMATS = ("nifti", "dicom", "npy")
MAX_STEPS = 1000  # RFlowScheduler's num_train_timesteps: more inference steps than that are refused

__all__ = ["BACKENDS", "FORMATS", "MODALITIES", "PRECISIONS", "SAMPLERS", "SampleOptions", "SampleProgress",
           "SampleResult", "check_format", "check_options", "label_name", "output_name"]


@dataclass
class SampleOptions:
    """One sampling run. ``steps`` None: the model card's ``sampling.default_steps``."""

    modality: str
    count: int
    out: Path
    model: str = DEFAULT_MODEL  # a cached or bundled model's name, or a model folder path
    cache_dir: Path | None = None
    steps: int | None = None
    sampler: str = "euler"
    seed: int = 0
    batch_size: int = 4  # CPU bf16 and fp32: the fastest per volume of 1, 2, 4, 8 (docs/sampling.md)
    file_format: str = "nifti"
    device: str = "auto"
    backend: str = "auto"  # see meddiff_cli.runtime.choice for what auto picks
    precision: str = "auto"
    threads: int | None = None  # CPU threads; None: the cores other processes leave free
    shard: tuple[int, int] | None = None
    preview: bool = False
    with_labels: bool = False  # also decode a label map per volume (models with a label decoder)
    overwrite: bool = False
    compile: bool = False
    max_memory_gb: float | None = None


@dataclass
class SampleResult:
    out: Path
    manifest: Path
    generated: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    device: str = ""
    provider: str = ""
    shard: tuple[int, int] = (0, 1)
    seconds: float = 0.0
    exported: bool = False
    batch_size: int = 0
    steps: int = 0
    backend: str = ""
    precision: str = ""  # what ran, e.g. "bf16 autocast"
    threads: int = 0
    choice: str = ""  # why auto chose it
    batch_reductions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        done = len(self.generated)
        return {
            "out": str(self.out), "manifest": str(self.manifest), "generated": done, "skipped": len(self.skipped),
            "shard": f"{self.shard[0]}/{self.shard[1]}", "device": self.device, "provider": self.provider,
            "backend": self.backend, "precision": self.precision, "threads": self.threads, "choice": self.choice,
            "exported_onnx": self.exported, "seconds": round(self.seconds, 3), "steps": self.steps,
            "batch_size": self.batch_size, "batch_size_reductions": self.batch_reductions,
            "volumes_per_s": round(done / self.seconds, 4) if self.seconds > 0 and done else None,
            "files": sorted(self.generated + self.skipped, key=lambda entry: entry["index"]),
        }


class SampleProgress:
    """Hooks for the CLI's progress bars (no-ops by default, so the library stays UI-free)."""

    def start(self, total: int, pending: int) -> None: ...
    def ready(self, result: SampleResult) -> None: ...  # the backend is loaded: result says what runs
    def batch(self, size: int, steps: int) -> None: ...
    def step(self) -> None: ...
    def batch_sampled(self, size: int) -> None: ...  # denoised and decoded; its files are being written
    def volume(self, entry: dict[str, Any]) -> None: ...
    def batch_reduced(self, old: int, new: int, reason: str) -> None: ...


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def output_name(modality: str, index: int, fmt: str) -> str:
    """File (or DICOM folder) name of volume ``index``; stable so that reruns find finished volumes."""
    stem = f"synth_{modality}_{index:04d}"
    return {"nifti": stem + ".nii.gz", "npy": stem + ".npy", "dicom": stem}[check_format(fmt)]


LABELS_DIR = "labels"


def label_name(modality: str, index: int, fmt: str) -> str:
    """Path (relative to the output folder) of volume ``index``'s label map: NIfTI, npy, or a DICOM-SEG file."""
    stem = output_name(modality, index, "npy")[:-len(".npy")]
    return f"{LABELS_DIR}/{stem}" + {"nifti": ".nii.gz", "npy": ".npy", "dicom": ".dcm"}[check_format(fmt)]


def check_options(options: SampleOptions) -> None:
    """Refuse bad settings before any model is loaded or output planned."""
    if options.count < 1:
        raise UsageError(f"--count must be at least 1, got {options.count}")
    if options.steps is not None and not 1 <= options.steps <= MAX_STEPS:
        raise UsageError(f"--steps must be between 1 and {MAX_STEPS}, got {options.steps}")
    if options.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.max_memory_gb is not None and not options.max_memory_gb > 0:
        raise UsageError(f"--max-memory must be a positive number of GB, got {options.max_memory_gb}")
    check_sampler(options.sampler)
    if options.backend not in BACKENDS:
        raise UsageError(f"unknown --backend {options.backend!r}; choose one of {', '.join(BACKENDS)}")
    if options.modality not in MODALITIES:
        raise UsageError(f"unknown --modality {options.modality!r}; choose one of {', '.join(MODALITIES)}")
    if options.precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {options.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if options.threads is not None and options.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {options.threads}")
    check_format(options.file_format)
    parse_device(options.device)
