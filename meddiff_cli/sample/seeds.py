"""Which volumes a process makes and from which noise: per-volume seeds and ``--shard`` / torchrun splitting.

Reproducibility contract: volume ``i`` of a run with seed ``S`` starts from the latent noise
``torch.randn((C, *latent_shape), generator=torch.Generator().manual_seed(volume_seed(S, i)))`` drawn on
CPU, so neither ``--batch-size`` nor ``--shard`` nor the device changes which volume index ``i`` gets
(up to floating-point differences between kernels).
"""

from __future__ import annotations

import numpy as np
import torch

from meddiff_cli.errors import UsageError
from meddiff_cli.paths import torchrun_launch


def volume_seed(run_seed: int, index: int) -> int:
    """A 63-bit seed for volume ``index`` of run ``run_seed`` (numpy SeedSequence: well-mixed, documented)."""
    words = np.random.SeedSequence([int(run_seed) & 0xFFFFFFFFFFFFFFFF, int(index)]).generate_state(2, np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & 0x7FFFFFFFFFFFFFFF


def initial_noise(run_seed: int, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(volume_seed(run_seed, index))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``I/N`` (0-based I) → (I, N); None when not given."""
    if text is None or text == "":
        return None
    try:
        index_text, total_text = text.split("/")
        index, total = int(index_text), int(total_text)
    except ValueError:
        raise UsageError(f"invalid --shard {text!r}: expected I/N, e.g. 0/4") from None
    if total < 1 or not 0 <= index < total:
        raise UsageError(f"invalid --shard {text!r}: need 0 <= I < N")
    return index, total


def torchrun_shard() -> tuple[int, int] | None:
    """Under torchrun (RANK/WORLD_SIZE set), every rank takes its own shard automatically."""
    launch = torchrun_launch()
    return (launch.rank, launch.world_size) if launch.distributed else None


def torchrun_device(device: str) -> str:
    """Put each torchrun rank on its own GPU (LOCAL_RANK) unless the user named an index."""
    launch = torchrun_launch()
    if launch.distributed and device in {"auto", "cuda"}:
        return f"cuda:{launch.local_rank}" if device == "cuda" or torch.cuda.is_available() else device
    return device


def shard_indices(count: int, shard: tuple[int, int]) -> list[int]:
    """Volume indices of ``shard`` (I, N): every i in 0..count-1 with i % N == I."""
    return [i for i in range(count) if i % shard[1] == shard[0]]
