"""CPU runtime of ``meddiff evaluate`` with radiomics features: COUNT real vs COUNT synthetic phantoms at SIZE^3.

    python benchmarks/evaluate_speed.py [--data DIR] [--count 50] [--size 64] [--workers 1] [--train]

Phantom corpora (REAL seed 0, SYNTH seed 1000, TRAIN seed 2000) are generated into ``--data`` first (resumable,
not timed). Prints one JSON line: total seconds and the seconds spent in each stage (from the progress callback).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from meddiff_cli.evaluate import EvaluateOptions, evaluate_folders
from meddiff_cli.phantom import write_phantom_corpus
from meddiff_cli.phantom.generate import FIELD_OF_VIEW_MM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "meddiff-evaluate-bench")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--train", action="store_true", help="also run the memorization check against a third corpus")
    args = parser.parse_args()

    roles = {"real": 0, "synth": 1000, **({"train": 2000} if args.train else {})}
    for role, seed in roles.items():
        write_phantom_corpus("ct", args.count, args.data / role, size=args.size, seed=seed, workers=args.workers)

    stage_start: dict[str, float] = {}
    stage_seconds: dict[str, float] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        stage_start.setdefault(stage, now)
        if done == total:
            stage_seconds[stage] = round(now - stage_start[stage], 2)

    settings = EvaluateOptions(
        features="radiomics",
        size=args.size,
        spacing=FIELD_OF_VIEW_MM["ct"] / args.size,
        workers=args.workers,
        device="cpu",
        anatomy=False,
    )
    started = time.perf_counter()
    result = evaluate_folders(
        args.data / "real", args.data / "synth", args.data / "train" if args.train else None, settings, on_progress
    )
    total = time.perf_counter() - started
    print(
        json.dumps(
            {
                "count_per_set": args.count,
                "size": args.size,
                "features": result.summary["features"]["extractor"],
                "workers": args.workers,
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "machine": platform.processor() or platform.machine(),
                "seconds_total": round(total, 2),
                "seconds_by_stage": stage_seconds,
                "frechet_distance": round(result.summary["fidelity"]["frechet_distance"]["value"], 3),
                "baseline_real_vs_real": round(result.summary["fidelity"]["frechet_distance"]["baseline_real_vs_real"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
