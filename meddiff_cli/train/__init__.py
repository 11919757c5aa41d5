"""Training: ``train_model(TrainOptions)`` runs the autoencoder and/or rectified-flow denoiser stage.

Modules: ``options`` (what was asked), ``setup`` (validation, card, run state), ``data`` (DATA folders, batch
order, augmentation), ``loop`` (the shared step loop), ``schedules`` (LR, GAN weight, EMA), ``autoencoder`` and
``diffusion`` (one per stage), ``checkpoint`` (pickle-free resumable state), ``distributed`` (torchrun / DDP),
``pipeline`` (both stages in order).
"""

from meddiff_cli.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "options": ["Reporter", "TrainOptions", "TrainResult"],
    "pipeline": ["train_model"],
})
