"""torch.distributed plumbing for ``torchrun --nproc_per_node=N -m meddiff_cli train …``.

Gradients are averaged with one flat all-reduce per network after ``backward`` — what DDP does — rather
than wrapping modules in ``DistributedDataParallel``: the GAN step runs the discriminator twice per
iteration (generator and discriminator passes) and freezes it for the first, which DDP's bucketed hooks
do not support cleanly. Identical seeds give identical initial weights, and averaged gradients keep every
rank's weights identical afterwards; rank 0 alone writes checkpoints, previews and progress.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from meddiff_cli.paths import torchrun_launch


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun set up (nccl on CUDA, gloo on CPU); a no-op for a single process."""
    launch = torchrun_launch()
    if not launch.distributed:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), launch.local_rank)


def average_gradients(module: torch.nn.Module, info: DistInfo) -> None:
    """All-reduce (mean) the gradients of ``module`` in one flat buffer."""
    if not info.active:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def broadcast_from_main(value: float, info: DistInfo, device: torch.device) -> float:
    """Rank 0's value on every rank (e.g. the latent scale factor, computed once)."""
    if not info.active:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()
