"""The segmenter of the anatomy check: trained on REAL's own label maps (cached), or the user's ONNX model.

Training reuses :mod:`meddiff_cli.segmentation` (MONAI UNet, Dice + cross-entropy, seeded batches). The
network is small (:data:`ANATOMY_NETWORK`, ~0.1 M parameters) because it only has to find structures the
size of organs on the harmonised grid, and it is trained once per REAL set: the cache key is the sha256 of
the harmonised REAL volumes and label maps plus the network and budget, so a second evaluation against the
same REAL set (another synthetic set, another model) reuses it. A random 20 % of REAL (at least one volume)
is held out of training and its Dice is reported, so a user can see how far to trust the segmenter.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meddiff_cli.errors import BadInputError, ModelError, UsageError
from meddiff_cli.evaluate.loading import ProgressFn, VolumeSet
from meddiff_cli.paths import cache_root

ANATOMY_NETWORK = {"channels": (8, 16, 32), "strides": (2, 2), "num_res_units": 0, "features": 8}
BATCH_SIZE = 2
LEARNING_RATE = 1e-2
VALIDATION_FRACTION = 0.2
WEIGHTS_FILE = "segmenter.safetensors"


@dataclass
class Segmenter:
    """``predict``: model-space volumes ``[n, X, Y, Z]`` -> class indices ``[n, X, Y, Z]`` (0 = background)."""

    predict: Callable[[np.ndarray], np.ndarray]
    class_names: list[str]
    source: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- trained on REAL


def _cache_key(real: VolumeSet, values: list[int], steps: int, seed: int) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"network": ANATOMY_NETWORK, "steps": steps, "seed": seed, "values": values,
                              "batch": BATCH_SIZE, "lr": LEARNING_RATE, "shape": list(real.arrays.shape)}).encode())
    digest.update(np.ascontiguousarray(real.arrays, np.float32).tobytes())
    digest.update(np.ascontiguousarray(real.labels, np.uint8).tobytes())
    return digest.hexdigest()


def _validation_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    held = max(1, int(round(VALIDATION_FRACTION * n))) if n >= 3 else 0
    return np.sort(order[held:]), np.sort(order[:held])


def trained_segmenter(real: VolumeSet, steps: int, seed: int, device: Any, cache: str | Path | None,
                      progress: ProgressFn | None = None) -> Segmenter:
    """A UNet trained on REAL's harmonised label maps (loaded from the cache when trained before)."""
    import torch

    from meddiff_cli.fsutil import atomic_dir
    from meddiff_cli.segmentation.metrics import dice_per_case
    from meddiff_cli.segmentation.network import NetworkConfig, SegmentationNet, load_network, save_network
    from meddiff_cli.segmentation.training import TrainBudget, predict, train_segmentation

    if real.labels is None:
        raise UsageError("--anatomy needs a label map for every REAL volume (an images/ + labels/ folder such as "
                         "`meddiff phantom` writes, or `meddiff preprocess --labels`), or --anatomy-model PATH.onnx",
                         real.root)
    values = sorted(int(v) for v in np.unique(real.labels) if v != 0)
    if not values:
        raise BadInputError("REAL's label maps are all background: no structure to check", real.root)
    names = [real.label_names.get(v, f"label_{v}") for v in values]
    lookup = np.zeros(256, dtype=np.int64)
    lookup[values] = np.arange(1, len(values) + 1)
    classes = torch.from_numpy(lookup[real.labels.astype(np.int64)])
    images = torch.from_numpy(np.ascontiguousarray(real.arrays, np.float32))
    key = _cache_key(real, values, steps, seed)
    folder = cache_root(cache) / "evaluate" / "anatomy" / key[:24]
    if (folder / WEIGHTS_FILE).is_file():
        net, sidecar = load_network(folder / WEIGHTS_FILE, device)
        return Segmenter(_torch_predict(net, device), names, {**sidecar["anatomy"], "cached": True})
    divisor = int(np.prod(ANATOMY_NETWORK["strides"]))
    if any(s % divisor for s in images.shape[1:]):
        raise UsageError(f"the anatomy segmenter needs grid sides divisible by {divisor}, got "
                         f"{list(images.shape[1:])}; pass --size or --no-anatomy")
    train, held = _validation_split(len(images), seed)
    config = NetworkConfig(**ANATOMY_NETWORK, out_channels=len(values) + 1)  # type: ignore[arg-type]
    torch.manual_seed(seed)
    net = SegmentationNet(config)
    epochs = max(1, min(10, steps))
    budget = TrainBudget(epochs=epochs, steps_per_epoch=max(1, steps // epochs), batch_size=BATCH_SIZE,
                         learning_rate=LEARNING_RATE)
    done = [0]

    def report(_: str) -> None:  # one call per epoch
        done[0] += 1
        if progress:
            progress("training anatomy segmenter", done[0], epochs)

    index = torch.from_numpy(train)
    train_segmentation(net, images[index], classes[index], budget, seed, device, report, "train")
    validation = None
    if len(held):
        prediction = predict(net, images[torch.from_numpy(held)], device)
        dice = dice_per_case(prediction, classes[torch.from_numpy(held)], len(values))
        validation = {name: (None if np.all(np.isnan(dice[:, c])) else round(float(np.nanmean(dice[:, c])), 4))
                      for c, name in enumerate(names)}
    source = {"kind": "trained on REAL's label maps", "classes": dict(zip(names, values, strict=True)),
              "trained_on": len(train), "validation_volumes": len(held), "validation_dice": validation,
              "steps": budget.epochs * budget.steps_per_epoch, "network": config.to_json(), "key": key}
    with atomic_dir(folder, replace=True) as tmp:  # a cache entry of meddiff's own
        save_network(net, tmp / WEIGHTS_FILE, {"anatomy": source})
    return Segmenter(_torch_predict(net, device), names, {**source, "cached": False})


def _torch_predict(net: Any, device: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    from meddiff_cli.segmentation.training import predict

    def run(volumes: np.ndarray) -> np.ndarray:
        return predict(net, torch.from_numpy(np.ascontiguousarray(volumes, np.float32)), device).numpy()

    return run


# ------------------------------------------------------------------------------------------- user ONNX


def onnx_segmenter(path: str | Path, device: str = "cpu") -> Segmenter:
    """A user model: input ``[B, 1, X, Y, Z]`` (model space), output logits ``[B, C+1, X, Y, Z]``.

    Class names come from ``<model>.json`` beside it (``{"labels": {name: channel}}``), else ``class_<c>``.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--anatomy-model must be an existing .onnx file, got {str(path)!r}")
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as error:
        raise ModelError(f"cannot load ONNX segmenter ({type(error).__name__}: {' '.join(str(error).split())[-200:]})", path) from None
    input_name = session.get_inputs()[0].name
    names: dict[int, str] = {}
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            table = json.loads(sidecar.read_text(encoding="utf-8")).get("labels", {})
            names = {int(channel): str(name) for name, channel in table.items() if int(channel) != 0}
        except (OSError, ValueError, AttributeError, TypeError):
            raise ModelError("unreadable segmenter sidecar: expected {\"labels\": {name: channel}}", sidecar) from None
    def run(volumes: np.ndarray) -> np.ndarray:
        out = []
        for volume in volumes:
            try:
                logits = session.run(None, {input_name: np.asarray(volume, np.float32)[None, None]})[0]
            except Exception as error:
                raise ModelError(f"ONNX segmenter failed ({type(error).__name__}: {error})", path) from None
            if logits.ndim != 5 or logits.shape[2:] != volume.shape:
                raise ModelError(f"ONNX segmenter must output [B, C+1, X, Y, Z], got {list(logits.shape)}", path)
            out.append(np.argmax(logits[0], axis=0))
        return np.stack(out)

    probe = session.get_outputs()[0].shape
    count = probe[1] if len(probe) == 5 and isinstance(probe[1], int) else (max(names) + 1 if names else 2)
    class_names = [names.get(c, f"class_{c}") for c in range(1, count)]
    return Segmenter(run, class_names, {"kind": "user ONNX model", "path": str(path), "classes": class_names})
