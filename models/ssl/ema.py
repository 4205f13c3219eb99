"""EMA teacher update: ``teacher = m·teacher + (1-m)·student``."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["unwrap", "update_teacher"]


def unwrap(module: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


@torch.no_grad()
def update_teacher(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Move every teacher parameter towards the student parameter of the same name.

    Args:
        teacher: the EMA model (updated in place).
        student: the trained model; may be wrapped in DDP or torch.compile.
        momentum: m in [0, 1]; 1 leaves the teacher unchanged, 0 copies the student.

    Raises:
        KeyError: when a teacher parameter has no student counterpart (a silent partial
            update would leave part of the teacher frozen at its initial weights).
        ValueError: on a shape mismatch or a momentum outside [0, 1].
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    student_params = dict(unwrap(student).named_parameters())
    t_list: list[torch.Tensor] = []
    s_list: list[torch.Tensor] = []
    for name, t in unwrap(teacher).named_parameters():
        if name not in student_params:
            raise KeyError(f"teacher parameter {name!r} has no student counterpart")
        s = student_params[name]
        if s.shape != t.shape:
            raise ValueError(f"shape mismatch for {name!r}: teacher {tuple(t.shape)}, student {tuple(s.shape)}")
        t_list.append(t)
        s_list.append(s.detach().to(dtype=t.dtype, device=t.device))
    if not t_list:
        return
    # mul then add (not lerp): m=1 and m=0 are then exact no-op / copy
    torch._foreach_mul_(t_list, momentum)
    torch._foreach_add_(t_list, s_list, alpha=1.0 - momentum)
