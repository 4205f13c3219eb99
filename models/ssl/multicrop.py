"""DINOv2 multi-crop augmentation for MRI slices, and its crop-major collate.

Two inputs: a grey slice ``[1, H, W]`` and a contrast stack ``[3, H, W]`` (BrainFound: the same
axial slice of T1, T2 and FLAIR as R, G, B; tasks/data/contrast_stacks.py). One rule covers both:
**channels never mix**. Every intensity augmentation acts on each channel by itself, with its
random parameters drawn once per crop (so the three contrasts of a crop see the same factor):

- brightness: the channel times a factor;
- contrast: the channel blended with *its own* mean (torchvision's ColorJitter blends an RGB
  image with the mean of its luminance 0.299 R + 0.587 G + 0.114 B, which would leak T2 and
  FLAIR into T1's channel; on one channel the two are identical, draws included);
- Gaussian blur and solarisation: per channel (as torchvision does them);
- no hue/saturation jitter and no random grayscale: no-ops on a replicated grey channel, and
  on a contrast stack they would mix (hue rotates channels into each other, grayscale averages
  them).

A grey slice is augmented as one channel and replicated to three only before normalisation
(same result, a third of the work); a stack is used as is.

Randomness comes from torch's generator (torchvision's transforms draw from it), so
``torch.manual_seed`` makes a call reproducible; DataLoader workers seed it per worker.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import v2

from mrifoundry.models.imagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ChannelwiseJitter", "MultiCrop", "MultiCropConfig", "collate_multicrop"]

@dataclass
class MultiCropConfig:
    """Multi-crop settings; defaults are DINOv2's, adapted to MRI (no colour augmentations).

    Per-global-crop settings are tuples indexed by the crop; crops past the tuple's end use
    its last entry.
    """

    global_size: int = 224
    local_size: int = 96
    n_global: int = 2
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    hflip_p: float = 0.5
    # brightness/contrast only, per channel (module docstring): hue/saturation would mix contrasts
    brightness: float = 0.4
    contrast: float = 0.4
    jitter_p: float = 0.8
    blur_p_global: tuple[float, ...] = (1.0, 0.1)
    blur_p_local: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 9
    solarize_p_global: tuple[float, ...] = (0.0, 0.2)
    solarize_threshold: float = 0.5  # DINOv2's 128 of 255, on [0, 1] intensities
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.n_global < 1 or self.n_local < 0:
            raise ValueError(f"need n_global >= 1 and n_local >= 0, got {self.n_global}, {self.n_local}")
        if self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd, got {self.blur_kernel}")


def _clamp01(t: Tensor) -> Tensor:
    # module-level, not a lambda: the transform must pickle into DataLoader workers
    return t.clamp(0.0, 1.0)


def _pick(values: Sequence[float], i: int) -> float:
    return values[min(i, len(values) - 1)]


class ChannelwiseJitter(v2.ColorJitter):
    """Brightness and contrast jitter that keeps channels apart (module docstring).

    Draws exactly what ``v2.ColorJitter(brightness, contrast)`` draws (order, then factors), so
    a grey channel gets the same result as with torchvision; only the contrast mean differs on
    three channels: each channel's own mean instead of the luminance mean.
    """

    def __init__(self, brightness: float, contrast: float) -> None:
        super().__init__(brightness=brightness, contrast=contrast)

    def transform(self, inpt: Tensor, params: dict) -> Tensor:
        out = inpt
        b, c = params["brightness_factor"], params["contrast_factor"]
        for fn_id in params["fn_idx"].tolist():
            if fn_id == 0 and b is not None:
                out = out.mul(b).clamp_(0.0, 1.0)
            elif fn_id == 1 and c is not None:
                mean = out.mean(dim=(-2, -1), keepdim=True)
                out = out.mul(c).add_(mean, alpha=1.0 - c).clamp_(0.0, 1.0)
        return out


def _maybe(p: float, transform: v2.Transform) -> list[v2.Transform]:
    if p <= 0.0:
        return []
    return [transform] if p >= 1.0 else [v2.RandomApply([transform], p=p)]


class MultiCrop:
    """Turns one image into ``n_global`` global and ``n_local`` local augmented crops.

    Args:
        cfg: the crop settings.
    """

    def __init__(self, cfg: MultiCropConfig | None = None) -> None:
        self.cfg = cfg = cfg or MultiCropConfig()
        self.global_transforms = [
            self._pipeline(cfg.global_size, cfg.global_scale, _pick(cfg.blur_p_global, i),
                           _pick(cfg.solarize_p_global, i))
            for i in range(cfg.n_global)
        ]
        self.local_transform = self._pipeline(cfg.local_size, cfg.local_scale, cfg.blur_p_local, 0.0)
        self.normalize = v2.Normalize(mean=list(cfg.mean), std=list(cfg.std))

    def _pipeline(self, size: int, scale: tuple[float, float], blur_p: float, solarize_p: float) -> v2.Compose:
        c = self.cfg
        steps: list[v2.Transform] = [
            v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            # bicubic overshoots; jitter and solarize assume [0, 1]
            v2.Lambda(_clamp01),
            v2.RandomHorizontalFlip(p=c.hflip_p),
            *_maybe(c.jitter_p, ChannelwiseJitter(brightness=c.brightness, contrast=c.contrast)),
            *_maybe(blur_p, v2.GaussianBlur(kernel_size=c.blur_kernel, sigma=c.blur_sigma)),
            *_maybe(solarize_p, v2.RandomSolarize(threshold=c.solarize_threshold, p=1.0)),
        ]
        return v2.Compose(steps)

    def _finish(self, crop: Tensor) -> Tensor:
        if crop.shape[0] == 1:
            crop = crop.expand(3, -1, -1)
        return self.normalize(crop.contiguous())

    def __call__(self, img: Tensor) -> dict[str, list[Tensor]]:
        """Crops of ``img``: ``[1, H, W]`` (grey, replicated to 3) or ``[3, H, W]`` (a contrast
        stack, channels kept apart), float in [0, 1].

        Returns:
            ``{"global": [3×g×g] * n_global, "local": [3×l×l] * n_local}``, normalised.

        Raises:
            ValueError: on a wrong shape or a non-float tensor.
        """
        if img.ndim != 3 or img.shape[0] not in (1, 3):
            raise ValueError(f"expected a [1|3, H, W] image, got shape {tuple(img.shape)}")
        if not img.is_floating_point():
            raise ValueError(f"expected a float image in [0, 1], got {img.dtype}")
        return {
            "global": [self._finish(t(img)) for t in self.global_transforms],
            "local": [self._finish(self.local_transform(img)) for _ in range(self.cfg.n_local)],
        }


def collate_multicrop(samples: Sequence[dict[str, list[Tensor]]]) -> dict[str, Tensor]:
    """Stack ``MultiCrop`` outputs **crop-major**: all samples' crop 0, then crop 1, ...

    Row ``c·B + b`` is crop ``c`` of sample ``b``, so ``x.chunk(n_crops)`` gives one
    ``[B, ...]`` block per crop — the per-crop tensors the DINO loss pairs up.

    Returns:
        ``{"global": [n_global·B, 3, g, g], "local": [n_local·B, 3, l, l]}`` (``local`` is an
        empty ``[0]`` tensor when there are no local crops).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    out: dict[str, Tensor] = {}
    for key in ("global", "local"):
        n_crops = len(samples[0][key])
        if any(len(s[key]) != n_crops for s in samples):
            raise ValueError(f"samples have different numbers of {key} crops")
        crops = [s[key][c] for c in range(n_crops) for s in samples]
        out[key] = torch.stack(crops) if crops else torch.empty(0)
    return out
