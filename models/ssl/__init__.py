"""Self-supervised objectives and their plumbing: the DINO net (``dino``), DINO/iBOT/KoLeo
losses, block masking, multi-crop augmentation, cosine schedules, the EMA teacher update and MAE.

One module per concern, so a meta-architecture composes the objectives by weight.
"""
from mrifoundry.models.ssl.ema import update_teacher
from mrifoundry.models.ssl.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
from mrifoundry.models.ssl.mae import MAE
from mrifoundry.models.ssl.masking import MaskingGenerator, mask_weights, sample_masks
from mrifoundry.models.ssl.multicrop import MultiCrop, MultiCropConfig, collate_multicrop
from mrifoundry.models.ssl.schedules import Schedules, build_schedules, cosine_schedule

__all__ = [
    "DINOLoss",
    "KoLeoLoss",
    "MAE",
    "MaskingGenerator",
    "MultiCrop",
    "MultiCropConfig",
    "Schedules",
    "build_schedules",
    "collate_multicrop",
    "cosine_schedule",
    "iBOTPatchLoss",
    "mask_weights",
    "sample_masks",
    "update_teacher",
]
