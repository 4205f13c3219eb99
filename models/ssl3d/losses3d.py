"""Losses shared by the volume self-supervised methods.

:func:`nt_xent` is SimCLR's normalised-temperature cross entropy, the "contrastive" term of
BrainSegFounder (and of SwinUNETR's pretraining it derives from).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["nt_xent"]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent over the 2B embeddings of two views, computed in float32.

    Row ``i`` of ``z1`` and row ``i`` of ``z2`` are the two views of sample ``i``. The 2B
    embeddings are L2-normalised and compared by cosine similarity; for each anchor the
    positive is the other view of its sample, the denominator runs over every other
    embedding (the positive included, the anchor itself excluded), and the loss is the mean
    of ``-log softmax`` of the positive over all 2B anchors.

    Args:
        z1, z2: ``[B, D]`` embeddings (any float dtype; cast to float32 here so the loss is
            stable under bf16 autocast).
        temperature: divides the cosine similarities.

    Raises:
        ValueError: shapes differ, are not 2-D, or ``temperature`` is not positive.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"nt_xent expects two [B, D] tensors of one shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    b = z1.shape[0]
    # autocast would run the similarity matmul in bf16; exp(sim / T) wants float32
    with torch.autocast(z1.device.type, enabled=False):
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        logits = z @ z.t() / temperature
        # the anchor is not its own negative: -inf drops it from the softmax's denominator
        logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
        positives = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
        return F.cross_entropy(logits, positives)
