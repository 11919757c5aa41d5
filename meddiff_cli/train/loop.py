"""The step loop both stages share: batches in step order, one seeded step at a time, clean stops.

Every random draw of step ``s`` comes from ``torch.manual_seed(step_seed(seed, stage, s, rank))`` and the batch
of step ``s`` from :class:`~meddiff_cli.train.data.StepBatchSampler`, so a checkpoint needs no RNG state beyond
``seed`` and ``step``. Ctrl-C / SIGTERM (or a reporter raising KeyboardInterrupt) finish the current step,
write a checkpoint and then stop; a step whose gradient norm is not finite is skipped, not applied.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch.optim import AdamW
from torch.utils.data import DataLoader

from meddiff_cli.errors import MeddiffError
from meddiff_cli.signals import ignore_interrupts_in_worker
from meddiff_cli.train import distributed as ddp
from meddiff_cli.train.data import StepBatchSampler, VolumeDataset, step_seed
from meddiff_cli.train.setup import TrainRun

STAGE_CODES = {"autoencoder": 1, "diffusion": 2}
Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
StepFn = Callable[[int, torch.Tensor, torch.Tensor], dict[str, float]]
"""``(step, inputs, class_ids) -> losses`` of one optimisation step."""
StepEnd = Callable[[int, bool], None]
"""``(steps done, final)``: validation, previews and checkpoints after a step."""


def make_optimizer(module: torch.nn.Module, config: dict[str, Any]) -> AdamW:
    return AdamW(module.parameters(), lr=float(config["lr"]), weight_decay=float(config["weight_decay"]))


def optimizer_step(optimizer: torch.optim.Optimizer, module: torch.nn.Module, run: TrainRun) -> bool:
    """Average gradients across ranks, clip, and step only if the gradient norm is finite."""
    ddp.average_gradients(module, run.dist)
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), float(run.config["grad_clip"]))
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


def _step_sampler(run: TrainRun, stage: str, start: int, total: int) -> StepBatchSampler:
    return StepBatchSampler(len(run.data.train), int(run.config["batch_size"]), run.seed, STAGE_CODES[stage],
                            start, total, run.dist.rank, run.dist.world_size)


def image_batches(run: TrainRun, stage: str, start: int, total: int) -> DataLoader:
    """Augmented training images of steps ``start..total-1`` (random crops for a patch-trained autoencoder)."""
    patch = int(run.config.get("ae_patch_size", 0)) if stage == "autoencoder" else 0
    dataset = VolumeDataset(run.data.train, float(run.config["intensity_jitter"]), bool(run.config["flip_lr"]), patch)
    return DataLoader(dataset, batch_sampler=_step_sampler(run, stage, start, total), num_workers=run.options.workers,
                      pin_memory=run.device.type == "cuda", worker_init_fn=_worker_ignores_interrupts)


def cached_batches(run: TrainRun, latents: torch.Tensor, start: int, total: int) -> Batches:
    """Batches of pre-encoded training latents in the same step-addressed order as the image loader."""
    class_ids = torch.tensor([case.class_id for case in run.data.train])
    for batch in _step_sampler(run, "diffusion", start, total):
        index = torch.tensor([case for case, _ in batch])
        yield latents[index], class_ids[index]


def _worker_ignores_interrupts(_: int) -> None:
    """Ctrl-C / SIGTERM reach the whole process group; only the main process reacts (it finishes the step,
    writes a checkpoint, then shuts the workers down). A worker dying first would turn that into a crash."""
    ignore_interrupts_in_worker()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextmanager
def _workers_shut_down(batches: Any) -> Iterator[None]:
    """Stop DataLoader workers however the loop ends. They ignore SIGTERM (see above), so a worker left
    alive by an exception (whose traceback keeps the iterator referenced) would hang interpreter exit."""
    try:
        yield
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


@contextmanager
def _sigint_stops(run: TrainRun) -> Iterator[None]:
    """Ctrl-C asks for a stop at the next step boundary (then a checkpoint is written) instead of tearing a step."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if run.stop_requested.is_set():  # second Ctrl-C: give up immediately
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        run.stop_requested.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _clean_worker_errors() -> Iterator[None]:
    """DataLoader workers re-raise our errors with the worker traceback as the message: keep its last line."""
    try:
        yield
    except MeddiffError as error:
        if error.path is None and error.message.startswith("Caught ") and "DataLoader worker" in error.message:
            last = error.message.strip().splitlines()[-1]
            raise type(error)(last.split(": ", 1)[-1]) from None
        raise


def _should_stop(run: TrainRun) -> bool:
    flag = 1.0 if run.stop_requested.is_set() else 0.0
    if run.dist.active:
        tensor = torch.tensor([flag], device=run.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        flag = float(tensor.item())
    return flag > 0


def run_steps(run: TrainRun, stage: str, start: int, total: int, step_fn: StepFn, at_step_end: StepEnd,
              batch_source: Batches | None = None) -> int:
    """Run steps ``start..total-1``; batches come from ``batch_source`` if given, else the image loader.

    Returns the number of completed steps. KeyboardInterrupt (Ctrl-C or a reporter) -> checkpoint, re-raise."""
    if run.dist.is_main:
        run.reporter.stage_started(stage, start, total)
    done = start
    batches = batch_source if batch_source is not None else iter(image_batches(run, stage, start, total))
    with _sigint_stops(run), _clean_worker_errors(), _workers_shut_down(batches):
        for step, (inputs, class_ids) in zip(range(start, total), batches):
            torch.manual_seed(step_seed(run.seed, STAGE_CODES[stage], step, run.dist.rank))
            losses = step_fn(step, inputs.to(run.device, non_blocking=True), class_ids.to(run.device))
            done = step + 1
            try:
                if run.dist.is_main:
                    run.reporter.step_done(stage, done, total, losses)
            except KeyboardInterrupt:
                run.stop_requested.set()
            interrupted = _should_stop(run)
            if run.dist.is_main:
                at_step_end(done, done == total or interrupted)
            ddp.barrier(run.dist)  # other ranks wait while rank 0 validates and writes
            if interrupted:
                raise KeyboardInterrupt
    return done
