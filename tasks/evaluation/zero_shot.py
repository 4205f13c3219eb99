"""Zero-shot segmentation by k-means over patch features (MRI-CORE §2.4 and §4.3.3).

All patch feature vectors of the given images are clustered together with scikit-learn's
KMeans (fixed seed; ``n_init=1``, which is what ``n_init="auto"`` means for k-means++ init, the
setting MRI-CORE reports). Each cluster is then named by majority vote over the ground-truth
labels of the pixels it covers, and the clusters named 1 form the predicted foreground.

Resolution: cluster maps live on the patch grid [h, w]; masks on the pixel grid [H, W]. Cluster
maps are upsampled by nearest neighbour to [H, W] once, and that same map is used both for the
vote and for the DSC (``tasks.evaluation.metrics.dice_2d``), so the vote is pixel-wise and no mask is
ever downsampled. (MRI-CORE's §2.4 text alternatively picks the single cluster overlapping the
target most; §4.3.3's majority vote is what is implemented here.)

Raw-pixel baseline (MRI-CORE §2.4: "K-means was directly applied to the original images"):
:class:`RawPixels` stands in for an encoder whose "patch grid" is the pixel grid and whose one
feature is the pixel's intensity (slice-wise min-max, as every model sees it, on 256 levels), so
the same joint clustering over the split, the same majority vote and the same DSC apply
(``model="raw-pixels"`` in the zero-shot runner). One-dimensional points are clustered as their
distinct values weighted by their counts: the same Lloyd iterations as on every pixel, at the
cost of at most 256 points.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from mrifoundry.tasks.evaluation.metrics import dice_2d

DEFAULT_K = (4, 8, 16, 32, 64, 128)
#: the zero-shot runner's model name for the raw-pixel k-means baseline
RAW_PIXELS = "raw-pixels"


class RawPixels:
    """The raw-pixel "encoder": ``embed`` maps images [B, C, S, S] in [0, 1] to their grey value
    [B, 1, S, S], rounded to 256 levels (8-bit slices have no more). ``image_size`` is both the
    input and the pixel grid the clusters and the DSC live on."""

    family = "slice"
    name = RAW_PIXELS
    embed_dim = 1

    def __init__(self, image_size: int = 256) -> None:
        self.image_size = int(image_size)

    def embed(self, x):
        return (x.float().mean(1, keepdim=True) * 255).round() / 255


def raw_pixels(image_size: int | None = None):
    """The baseline as a loaded model (label ``raw-pixels``, no weights); default 256 px, the
    resolution at which MRI-CORE scores segmentations."""
    from mrifoundry.tasks.evaluation.model_choice import Loaded
    return Loaded(RawPixels(image_size or 256), RAW_PIXELS, "n/a", None)


def _batch(features) -> np.ndarray:
    f = np.asarray(features, dtype=np.float32)
    if f.ndim == 3:
        f = f[None]
    if f.ndim != 4:
        raise ValueError(f"features must be [D, h, w] or [N, D, h, w], got shape {f.shape}")
    return f


def kmeans_segment(features, k: int, seed: int = 0, n_init: int = 1) -> np.ndarray:
    """Cluster every patch of ``features`` ([D, h, w] or [N, D, h, w]) jointly; labels [N, h, w].

    Raises ValueError when ``k`` exceeds the number of patches (N·h·w).
    """
    f = _batch(features)
    n, d, h, w = f.shape
    n_patches = n * h * w
    if not 1 <= k <= n_patches:
        raise ValueError(f"k={k} must be between 1 and the number of patches ({n_patches})")
    X = f.transpose(0, 2, 3, 1).reshape(n_patches, d)
    km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed)
    if d == 1:
        # raw pixels: distinct values weighted by their counts give the same Lloyd iterations
        # (weighted means, weighted k-means++ seeding) as millions of repeated points
        vals, inv, counts = np.unique(X[:, 0], return_inverse=True, return_counts=True)
        if k >= len(vals):  # every distinct value its own cluster, the rest stay empty
            return inv.reshape(n, h, w).astype(np.int64)
        km.fit(vals[:, None], sample_weight=counts)
        return km.labels_[inv].reshape(n, h, w).astype(np.int64)
    with warnings.catch_warnings():
        # duplicated feature vectors (e.g. padded background) can leave fewer distinct points
        # than k; sklearn warns and still returns a valid labelling, which is what we want
        warnings.filterwarnings("ignore", message="Number of distinct clusters",
                                category=ConvergenceWarning)
        labels = km.fit_predict(X)
    return labels.reshape(n, h, w).astype(np.int64)


def upsample_nearest(labels, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of [N, h, w] (or [h, w]) maps to ``size``, sampling each output
    pixel at its centre (equal to ``np.repeat`` for integer factors)."""
    lab = np.asarray(labels)
    H, W = size
    h, w = lab.shape[-2:]
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(int), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(int), w - 1)
    return lab[..., rows[:, None], cols[None, :]]


def best_overlap_mapping(cluster_labels, target_masks) -> dict[int, int]:
    """Majority vote: each cluster -> the target label it overlaps most (ties -> smaller label).

    ``cluster_labels`` and ``target_masks`` (bool or integer labels) must have the same shape;
    every cluster id present in ``cluster_labels`` gets an entry.
    """
    c = np.asarray(cluster_labels).ravel()
    t = np.asarray(target_masks).astype(np.int64).ravel()
    if np.asarray(cluster_labels).shape != np.asarray(target_masks).shape:
        raise ValueError("cluster_labels and target_masks must have the same shape")
    if t.size and t.min() < 0:
        raise ValueError("target labels must be non-negative")
    clusters, c_idx = np.unique(c, return_inverse=True)
    counts = np.zeros((len(clusters), int(t.max(initial=0)) + 1), dtype=np.int64)
    np.add.at(counts, (c_idx, t), 1)
    return {int(cl): int(lab) for cl, lab in zip(clusters, counts.argmax(1))}


def zero_shot_dice(features, masks, k_values: Iterable[int] = DEFAULT_K, seed: int = 0,
                   n_init: int = 1) -> dict[int, float]:
    """Mean 2D DSC of the k-means segmentation for each k. ``features`` [N, D, h, w] (or
    [D, h, w]), binary ``masks`` [N, H, W] (or [H, W]).

    k values larger than the number of patches (N·h·w) are skipped: they are absent from the
    returned dict.
    """
    f = _batch(features)
    m = np.asarray(masks).astype(bool)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or len(m) != len(f):
        raise ValueError(f"masks must be [N, H, W] with N={len(f)}, got shape {m.shape}")
    n_patches = f.shape[0] * f.shape[2] * f.shape[3]
    out: dict[int, float] = {}
    for k in k_values:
        if k > n_patches:
            continue
        up = upsample_nearest(kmeans_segment(f, k, seed=seed, n_init=n_init), m.shape[-2:])
        mapping = best_overlap_mapping(up, m)
        fg = np.array([cl for cl, lab in mapping.items() if lab == 1], dtype=up.dtype)
        out[int(k)] = dice_2d(np.isin(up, fg), m)
    return out


def overlay_png(image, labels, png_path: str | Path, alpha: float = 0.45) -> Path:
    """Blend a grey image [H, W] in [0, 1] with a colour per label; labels [h, w] at another
    resolution are upsampled by nearest neighbour. Returns the path."""
    from matplotlib import colormaps
    from matplotlib.image import imsave

    img = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    if img.ndim != 2:
        raise ValueError(f"image must be [H, W], got shape {img.shape}")
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be [h, w], got shape {lab.shape}")
    if lab.shape != img.shape:
        lab = upsample_nearest(lab, img.shape)
    ids, inv = np.unique(lab, return_inverse=True)
    # tab20 keeps neighbouring ids visually distinct; beyond 20 labels spread a smooth map
    cmap = colormaps["tab20"] if len(ids) <= 20 else colormaps["gist_ncar"]
    palette = cmap(np.arange(len(ids)) if len(ids) <= 20 else np.linspace(0, 1, len(ids)))[:, :3]
    rgb = (1 - alpha) * img[..., None] + alpha * palette[inv.reshape(lab.shape)]
    path = Path(png_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, np.clip(rgb, 0, 1), format="png")
    return path
