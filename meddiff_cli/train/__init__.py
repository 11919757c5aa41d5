"""Training: ``train_model(TrainOptions)`` runs the autoencoder and/or rectified-flow denoiser stage.

Modules: ``data`` (DATA folders, batch order, augmentation), ``trainer`` (the two stages), ``checkpoint``
(pickle-free resumable state), ``distributed`` (torchrun / DDP), ``previews`` (PNG slices).
"""

from meddiff_cli.train.trainer import Reporter, TrainOptions, TrainResult, train_model

__all__ = ["Reporter", "TrainOptions", "TrainResult", "train_model"]
