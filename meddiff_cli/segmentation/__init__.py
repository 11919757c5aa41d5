"""``meddiff augment-seg``: does synthetic data improve 3D segmentation when labels are scarce?

* :mod:`~meddiff_cli.segmentation.data` -- pairing images with label maps, harmonisation, splits;
* :mod:`~meddiff_cli.segmentation.network` -- the MONAI UNet + head shared by all arms, safetensors storage;
* :mod:`~meddiff_cli.segmentation.training` -- self-supervised restoration pre-training and supervised training;
* :mod:`~meddiff_cli.segmentation.metrics` -- per-class Dice/HD95 (MONAI) and paired statistics;
* :mod:`~meddiff_cli.segmentation.experiment` -- the arms, (K, seed) loop, results.json and the plot.
"""

from meddiff_cli.segmentation.experiment import ExperimentSettings, prepare_data, run_experiment
from meddiff_cli.segmentation.metrics import dice_per_case, hd95_per_case, paired_comparison, score_predictions
from meddiff_cli.segmentation.network import NetworkConfig, SegmentationNet, load_network, save_network
from meddiff_cli.segmentation.training import predict

__all__ = [
    "ExperimentSettings",
    "NetworkConfig",
    "SegmentationNet",
    "dice_per_case",
    "hd95_per_case",
    "load_network",
    "paired_comparison",
    "predict",
    "prepare_data",
    "run_experiment",
    "save_network",
    "score_predictions",
]
