"""LoRA on SAM's image encoder: low-rank updates of the query and value projections only.

finetune-SAM's ``finetune_type='lora'`` (``models/sam_LoRa.py``, after SAMed): in each chosen
encoder block the fused ``attn.qkv`` Linear (dim → 3·dim, output laid out ``[q | k | v]``)
gets ``q += B_q A_q x`` and ``v += B_v A_v x`` with rank ``r = 4``; ``k`` is untouched. ``A``
is Kaiming-uniform (a = √5, PyTorch's Linear default), ``B`` starts at zero, so a fresh LoRA
model computes exactly what the base model computes; there is no ``alpha / r`` scaling (scale 1,
as upstream).

Why not PEFT: ``LoraConfig(target_modules=["qkv"])`` adapts a whole module, i.e. q, k and v
of the fused Linear (rank-r update of the 3·dim output); it cannot restrict the update to two
thirds of one Linear's output. The few lines here do exactly finetune-SAM's q/v update.

As ``models.adapters`` does, the Linear's class is switched to a subclass in place (no
wrapper module): ``…attn.qkv.weight`` / ``.bias`` keep their state-dict keys, so SAM and
MRI-CORE checkpoints still load after LoRA is added; the new tensors are
``…attn.qkv.lora_{a,b}_{q,v}.weight``.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["LoRAQV", "add_encoder_lora", "lora_parameter_names", "LORA_RANK"]

log = logging.getLogger(__name__)

LORA_RANK = 4  # finetune-SAM: LoRA_Sam(args, sam, r=4)


class LoRAQV(nn.Linear):
    """A fused ``qkv`` Linear with rank-``r`` updates on its q and v thirds (made by :meth:`adapt`)."""

    lora_a_q: nn.Linear
    lora_b_q: nn.Linear
    lora_a_v: nn.Linear
    lora_b_v: nn.Linear

    @classmethod
    def adapt(cls, linear: nn.Linear, r: int = LORA_RANK) -> LoRAQV:
        if isinstance(linear, LoRAQV):
            raise ValueError("qkv already has LoRA")
        if type(linear) is not nn.Linear or linear.out_features != 3 * linear.in_features:
            raise TypeError(f"expected a fused qkv nn.Linear(dim, 3*dim), got {linear!r}")
        if r < 1:
            raise ValueError("LoRA rank must be >= 1")
        dim, w = linear.in_features, linear.weight
        linear.__class__ = cls
        for name, (i, o) in (("lora_a_q", (dim, r)), ("lora_b_q", (r, dim)),
                             ("lora_a_v", (dim, r)), ("lora_b_v", (r, dim))):
            setattr(linear, name, nn.Linear(i, o, bias=False).to(device=w.device, dtype=w.dtype))
        for a, b in ((linear.lora_a_q, linear.lora_b_q), (linear.lora_a_v, linear.lora_b_v)):
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)
        return linear

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        d = self.in_features
        q = out[..., :d] + self.lora_b_q(self.lora_a_q(x))
        v = out[..., 2 * d:] + self.lora_b_v(self.lora_a_v(x))
        # k's third is passed through as computed by the base weights
        return torch.cat([q, out[..., d:2 * d], v], dim=-1)


def add_encoder_lora(encoder: nn.Module, r: int = LORA_RANK, blocks: Iterable[int] | None = None) -> tuple[int, ...]:
    """Put LoRA on ``encoder.blocks[i].attn.qkv`` for each ``i`` in ``blocks`` (None: every block,
    finetune-SAM's ``encoder_lora_layer=[]``), in place. Returns the blocks adapted."""
    n = len(encoder.blocks)
    chosen = tuple(range(n)) if blocks is None else tuple(sorted({int(b) for b in blocks if 0 <= int(b) < n}))
    for i in chosen:
        LoRAQV.adapt(encoder.blocks[i].attn.qkv, r)
    log.debug("LoRA r=%d on blocks %s", r, chosen)
    return chosen


def lora_parameter_names(model: nn.Module) -> list[str]:
    """Names of the LoRA matrices (``lora_`` in the name)."""
    return [n for n, _ in model.named_parameters() if ".lora_" in n]
