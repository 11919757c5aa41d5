"""``meddiff augment-seg``: does synthetic data improve 3D segmentation when labels are scarce?

* :mod:`~meddiff_cli.segmentation.options` -- experiment and network settings;
* :mod:`~meddiff_cli.segmentation.data` -- pairing images with label maps, harmonisation, splits;
* :mod:`~meddiff_cli.segmentation.network` -- the MONAI UNet + head shared by all arms, safetensors storage;
* :mod:`~meddiff_cli.segmentation.training` -- self-supervised restoration pre-training and supervised training;
* :mod:`~meddiff_cli.segmentation.metrics` -- per-class Dice/HD95 (MONAI) and paired statistics;
* :mod:`~meddiff_cli.segmentation.arms` -- the arms A-E, and training, scoring and saving one model;
* :mod:`~meddiff_cli.segmentation.experiment` -- the (K, seed) loop, paired tests, results.json and the plot.
"""

from meddiff_cli.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "options": ["ExperimentSettings", "NetworkConfig"],
    "experiment": ["prepare_data", "run_experiment"],
    "metrics": ["dice_per_case", "hd95_per_case", "paired_comparison", "score_predictions"],
    "network": ["SegmentationNet", "load_network", "save_network"],
    "training": ["predict"],
})
