"""``meddiff sample``: parse flags, run :func:`meddiff_cli.sample.sample_volumes`, show progress, report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from meddiff_cli.cli.common import (
    VERBOSE_OPTION, choice, complete_device, complete_model, default, duration_text, info, print_json, progress_bar,
    show_settings,
)
from meddiff_cli.devices import CpuClock
from meddiff_cli.modality import ALIASES
from meddiff_cli.sample.options import (
    BACKENDS, FORMATS, MODALITIES, PRECISIONS, SAMPLERS, SampleOptions, SampleProgress, SampleResult,
)

HELP = (
    "Generate synthetic CT/MRI volumes from a trained model (rectified-flow sampling in latent space, on the "
    "fastest path of this machine by default: PyTorch bf16 autocast on CPUs with AMX/AVX512-BF16, ONNX Runtime "
    "fp16 on CUDA). Outputs are marked synthetic and listed with seeds and sha256 in DIR/manifest.json; an "
    "interrupted run resumes where it stopped."
)
EPILOG = (
    "Example: meddiff sample --modality ct --count 20 --out synth/ --seed 0 --preview  "
    "(volume i of seed S is the same for any --shard, and for any --batch-size on the bf16 CPU path; other paths "
    "may differ by floating-point rounding between batch sizes, see docs/sampling.md; split a run over 4 jobs with "
    "--shard 0/4 … --shard 3/4 into the same DIR). With --with-labels each volume gets labels/<name>.nii.gz "
    "(a DICOM-SEG labels/<name>.dcm with --format dicom) on the same grid. Exit codes: 2 bad flags or existing "
    "outputs without --overwrite, 6 model missing/tampered (or without a label decoder for --with-labels), "
    "7 requested device unavailable, 8 cannot write the output (disk full, permissions)."
)


class _RichProgress(SampleProgress):
    """Two bars on stderr: volumes of this shard, and denoiser steps of the current batch. Where stderr is not a
    terminal (a log file, a pipeline), one plain line per batch instead: volumes done/total, s/volume, ETA."""

    def __init__(self, bar, options: SampleOptions, quiet: bool, verbose: bool = False) -> None:
        self.bar, self.options, self.quiet, self.verbose = bar, options, quiet, verbose
        self.last = self.began = time.perf_counter()
        self.volumes = self.steps = None
        self.total = self.done = self.sampled = 0

    def start(self, total: int, pending: int) -> None:
        self.volumes = self.bar.add_task("volumes", total=total, completed=total - pending, status="")
        self.steps = self.bar.add_task("steps", total=1, status="")
        self.total, self.done = total, total - pending

    def ready(self, result: SampleResult) -> None:
        if result.exported:
            info(f"exported the ONNX graphs ({result.precision}) on first use", self.quiet)
        threads = f"{result.threads} thread" + ("s" if result.threads != 1 else "")
        info(f"running on {result.device} ({result.provider}; backend {result.backend}, {result.precision}, "
             f"{threads}, batch {result.batch_size})", self.quiet)
        if self.verbose and result.choice:
            info(f"[dim]{result.choice}[/]", self.quiet)
        self.last = self.began = time.perf_counter()  # per-volume times below exclude export and model loading

    def batch_sampled(self, size: int) -> None:
        self.done, self.sampled = self.done + size, self.sampled + size
        if self.bar.disable:
            per_volume = (time.perf_counter() - self.began) / self.sampled
            eta = duration_text(per_volume * (self.total - self.done))
            info(f"sampled {self.done}/{self.total} volumes ({per_volume:.2f} s/volume, ETA {eta})", self.quiet)

    def batch(self, size: int, steps: int) -> None:
        self.bar.reset(self.steps, total=steps, status=f"batch of {size}")

    def step(self) -> None:
        self.bar.advance(self.steps)

    def batch_reduced(self, old: int, new: int, reason: str) -> None:
        info(f"batch size {old} -> {new} ({reason})", self.quiet)

    def volume(self, entry: dict[str, Any]) -> None:
        self.bar.update(self.volumes, advance=1, status=entry["file"])
        if self.verbose:  # time since the previous volume was written (a batch finishes together)
            now = time.perf_counter()
            info(f"{entry['file']} written (seed {entry.get('seed')}, +{now - self.last:.2f} s)", self.quiet)
            self.last = now


def sample_command(
    modality: str = typer.Option(..., "--modality", "-m", help="Modality to generate (one the model was trained on).",
                                 **choice(MODALITIES, ALIASES)),
    count: int = typer.Option(..., "--count", "-n", help="Number of volumes in the run (indices 0..N-1)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (volumes, manifest.json, previews/)."),
    model: str = typer.Option(default(SampleOptions, "model"), "--model", autocompletion=complete_model,
                              help="Model name in the cache (TAB completes them), or a model folder path."),
    steps: int | None = typer.Option(
        default(SampleOptions, "steps"), "--steps", show_default="the model's sampling.default_steps",
        help="Sampling steps (denoiser evaluations for euler; see `meddiff models info`)."),
    sampler: str = typer.Option(default(SampleOptions, "sampler"), "--sampler",
                                help="euler (RFlowScheduler.step) or heun (2 evaluations/step).", **choice(SAMPLERS)),
    seed: int = typer.Option(default(SampleOptions, "seed"), "--seed",
                             help="Run seed; volume i gets its own seed derived from (seed, i)."),
    batch_size: int = typer.Option(default(SampleOptions, "batch_size"), "--batch-size", "-b",
                                   help="Volumes denoised together (memory vs speed)."),
    max_memory: float | None = typer.Option(
        default(SampleOptions, "max_memory_gb"), "--max-memory", help="GB the sampler may use: lowers --batch-size "
        "up front from an estimate (docs/reliability.md); exit 2 if even one volume would not fit. CUDA "
        "out-of-memory halves the batch anyway."),
    file_format: str = typer.Option(default(SampleOptions, "file_format"), "--format",
                                    help="nifti (.nii.gz; CT int16 HU), dicom (series folder) or npy.", **choice(FORMATS)),
    device: str = typer.Option(default(SampleOptions, "device"), "--device", autocompletion=complete_device,
                               help="auto, cpu, cuda or cuda:N (cuda fails with exit 7 if unavailable)."),
    backend: str = typer.Option(default(SampleOptions, "backend"), "--backend", **choice(BACKENDS),
                                help="auto (the fastest measured path here: torch on CPUs, ONNX Runtime on CUDA), "
                                     "onnx (ONNX Runtime) or torch (PyTorch)."),
    precision: str = typer.Option(default(SampleOptions, "precision"), "--precision", **choice(PRECISIONS),
                                  help="auto (bf16 on CPUs with AMX/AVX512-BF16, else fp32; fp16 on CUDA), fp32, fp16 "
                                       "(for GPUs) or bf16 (PyTorch autocast)."),
    threads: int | None = typer.Option(
        default(SampleOptions, "threads"), "--threads", show_default="the cores other processes leave free",
        help="CPU threads for the networks (torch and ONNX Runtime)."),
    shard: str | None = typer.Option(None, "--shard", help="I/N: generate only indices i with i % N == I (0-based)."),
    preview: bool = typer.Option(default(SampleOptions, "preview"), "--preview",
                                 help="Also write previews/<name>.png with three mid-slices."),
    with_labels: bool = typer.Option(default(SampleOptions, "with_labels"), "--with-labels",
                                     help="Also write each volume's label map (labels/<name>; the model's label "
                                          "names are in manifest.json). Needs a model with a label decoder."),
    overwrite: bool = typer.Option(default(SampleOptions, "overwrite"), "--overwrite",
                                   help="Replace existing outputs instead of refusing."),
    compile_model: bool = typer.Option(default(SampleOptions, "compile"), "--compile",
                                       help="torch backend on CUDA: torch.compile the denoiser."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Model cache folder (default: $MEDDIFF_HOME or the user cache)."),
    offline: bool = typer.Option(False, "--offline", help="Accepted for scripts: meddiff never uses the network."),
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or messages on stderr."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    since = CpuClock.now()  # before the heavy imports: --threads auto measures free cores from here
    from meddiff_cli.sample import parse_shard, sample_volumes

    show_settings(verbose, quiet)
    options = SampleOptions(
        modality=modality, count=count, out=out, model=model, cache_dir=cache_dir, steps=steps,
        sampler=sampler, seed=seed, batch_size=batch_size, file_format=file_format,
        device=device.lower(), backend=backend, precision=precision, threads=threads, shard=parse_shard(shard),
        preview=preview, with_labels=with_labels, overwrite=overwrite, compile=compile_model, max_memory_gb=max_memory,
    )
    with progress_bar(quiet) as bar:
        result = sample_volumes(options, _RichProgress(bar, options, quiet, verbose), since)
    summary = result.to_dict()
    rate = f", {summary['volumes_per_s']} volumes/s" if summary["volumes_per_s"] else ""
    info(f"{len(result.generated)} generated, {len(result.skipped)} already done (shard "
         f"{summary['shard']}; {result.steps} {options.sampler} steps) in {out}{rate}", quiet)
    if json_output:
        print_json(summary)


def register(app: typer.Typer) -> None:
    app.command("sample", help=HELP, epilog=EPILOG)(sample_command)
