"""DINOv2's three losses: DINO (image-level), iBOT (masked-patch level) and KoLeo.

The teacher side of DINO and iBOT is centred: ``softmax((t - center) / T_teacher)``, with
``center`` an EMA (momentum 0.9) of the teacher logits' batch mean, averaged over all DDP
ranks. Each center is a registered buffer, so it is saved with the checkpoint and a resumed
run does not restart from zero.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DINOLoss", "KoLeoLoss", "iBOTPatchLoss"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class _CenteredTeacher(nn.Module):
    """Teacher centering shared by the DINO and iBOT losses."""

    center: Tensor

    def __init__(self, out_dim: int, student_temp: float, center_momentum: float) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be positive, got {out_dim}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.out_dim = out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """Teacher probabilities ``softmax((logits - center) / teacher_temp)`` over the last dim."""
        # float32 softmax: at T=0.04 bf16 logits saturate
        return F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor | Sequence[Tensor]) -> None:
        """EMA of the teacher logits' mean: ``c = m·c + (1-m)·mean``.

        The mean is over every row on every rank (sum and count all-reduced), so ranks with
        different batch sizes are weighted by their rows. A step where no rank has any row
        (e.g. no masked patch anywhere) leaves the center unchanged.
        """
        if not isinstance(teacher_logits, Tensor):
            teacher_logits = torch.cat(list(teacher_logits))
        t = teacher_logits.detach().float().reshape(-1, self.out_dim)
        total = torch.cat([t.sum(0), t.new_tensor([t.shape[0]])])
        if _distributed():
            dist.all_reduce(total)
        count = total[-1]
        batch_center = (total[:-1] / count.clamp(min=1.0)).unsqueeze(0)
        updated = self.center * self.center_momentum + batch_center * (1.0 - self.center_momentum)
        # torch.where, not `if count == 0`: no host-device sync every step
        self.center.copy_(torch.where(count > 0, updated, self.center))


class DINOLoss(_CenteredTeacher):
    """Cross-entropy between student crops and teacher global crops (DINOv2 defaults).

    Args:
        out_dim: number of prototypes K.
        student_temp: student softmax temperature.
        center_momentum: EMA momentum of the teacher center.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__(out_dim, student_temp, center_momentum)

    def forward(self, student_logits: Sequence[Tensor], teacher_probs: Sequence[Tensor], n_global: int) -> Tensor:
        """Mean over (student crop i, teacher global j), i ≠ j, of ``-Σ_k t_jk log s_ik``.

        Args:
            student_logits: one ``[B, K]`` tensor per crop, the ``n_global`` globals first.
            teacher_probs: one ``[B, K]`` tensor per global crop (already centred/softmaxed).
            n_global: number of global crops.

        Returns:
            Scalar loss: the sum of the batch-mean cross-entropies divided by the number of
            pairs, ``n_global·(n_global-1) + n_local·n_global`` (2·1 + 8·2 for DINOv2).

        Raises:
            ValueError: on inconsistent crop counts, or when there is no pair at all.
        """
        if len(teacher_probs) != n_global:
            raise ValueError(f"expected {n_global} teacher tensors, got {len(teacher_probs)}")
        if len(student_logits) < n_global:
            raise ValueError(f"expected at least {n_global} student tensors, got {len(student_logits)}")
        total = student_logits[0].new_zeros((), dtype=torch.float32)
        n_terms = 0
        for i, s in enumerate(student_logits):
            log_p = F.log_softmax(s.float() / self.student_temp, dim=-1)
            for j, t in enumerate(teacher_probs):
                if i == j:  # a global crop is not its own target
                    continue
                total = total - (t * log_p).sum(-1).mean()
                n_terms += 1
        if n_terms == 0:
            raise ValueError("DINO loss needs at least two crops (one global plus another)")
        return total / n_terms


class iBOTPatchLoss(_CenteredTeacher):
    """Masked-patch cross-entropy of iBOT (DINOv2 defaults).

    Args:
        patch_out_dim: number of patch prototypes K.
        student_temp: student softmax temperature.
        center_momentum: EMA momentum of the teacher center.
    """

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__(patch_out_dim, student_temp, center_momentum)

    def forward_masked(self, student_patch_logits_masked: Tensor, teacher_probs_masked: Tensor,
                       masks_weight: Tensor, n_masked_images: int) -> Tensor:
        """``-Σ_p w_p Σ_k t_pk log s_pk / n_masked_images`` over the M masked patches.

        Args:
            student_patch_logits_masked: ``[M, K]`` student logits of the masked patches.
            teacher_probs_masked: ``[M, K]`` teacher probabilities of the same patches.
            masks_weight: ``[M]``, ``1 / (masked patches in the patch's image)``
                (``models.ssl.masking.mask_weights``), so every masked image counts equally
                whatever its mask ratio.
            n_masked_images: the divisor. DINOv2 passes the number of global-crop images in
                the batch, masked or not (``masks.shape[0]``), which also scales the loss by
                the fraction of masked images; pass the masked count for a per-masked-image mean.

        Returns:
            Scalar loss (0 when M = 0, still attached to the graph; a divisor of 0 is taken as 1).
        """
        if n_masked_images < 0:
            raise ValueError(f"n_masked_images must be >= 0, got {n_masked_images}")
        log_p = F.log_softmax(student_patch_logits_masked.float() / self.student_temp, dim=-1)
        per_patch = (teacher_probs_masked * log_p).sum(-1)
        return -(per_patch * masks_weight.to(per_patch.dtype)).sum() / max(n_masked_images, 1)


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy regulariser: ``-mean log(d_nn)`` of L2-normalised rows.

    Pushes the batch's features apart (uniform spreading on the sphere); DINOv2 applies it
    with weight 0.1 to the student's global cls tokens, per global-crop chunk.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Loss for ``x`` of shape ``[B, D]`` (B ≥ 2)."""
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"KoLeo needs a [B, D] batch with B >= 2, got shape {tuple(x.shape)}")
        # float32 outside autocast: the log of small distances is meaningless in bf16
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = F.normalize(x.float(), p=2, dim=-1, eps=self.eps)
            with torch.no_grad():
                sim = z @ z.T
                sim.fill_diagonal_(-2.0)  # below any cosine, so a row never picks itself
                nn_idx = sim.argmax(dim=1)
            # eps² inside the sqrt keeps the gradient finite for duplicate rows
            d = ((z - z[nn_idx]).pow(2).sum(-1) + self.eps**2).sqrt()
            return -torch.log(d + self.eps).mean()
