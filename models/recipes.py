"""Pretraining recipes, the model side: what each named recipe trains and how.

Slice recipes (:class:`PretrainConfig`, tasks/pretraining/slices.py) and volume recipes
(:class:`VolumeConfig`, tasks/pretraining/volumes.py): architecture, objective and losses,
crops and masking, optimiser and the schedules' shapes, epochs and batch size (the published
recipe: the lr scales with the batch, the schedules count epochs). How a run is driven — seed,
data-loader workers, log and checkpoint cadence, early stop, bf16, caches — is the run control
of tasks/pretraining/recipes.py, which composes both into the recipes the ``pretrain`` pipeline
runs. ``mri-core`` is MRI-CORE's recipe as far as the paper and its checkpoint names tell
(docs/models.md): DINOv2 self-distillation, student and teacher both initialised from SAM
ViT-B, layerscale off, 4 epochs, batch 128 per GPU, a smaller learning rate than DINOv2's
default (the value is not published; ours is stated below), 2×224 + 8×96 crops. The
``*-tiny`` recipes run the same code on CPU in seconds (tests, the demo).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


class _Options:
    def replace(self, **overrides):
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown pretraining options: {sorted(unknown)}")
        # JSON gives lists where the dataclass has tuples
        fixed = {k: tuple(v) if isinstance(v, list) and isinstance(getattr(self, k), tuple) else v
                 for k, v in overrides.items()}
        return dataclasses.replace(self, **fixed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        """Inverse of :meth:`to_dict` (JSON lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class PretrainConfig(_Options):
    kind = "slices"
    objective: str = "dinov2"                  # dinov2 | mae
    # slices: PNG slices of the catalog; contrast_stacks: BrainFound's T1/T2/FLAIR axial
    # slice stacks built from the catalog's NIfTI (tasks/data/contrast_stacks.py)
    inputs: str = "slices"
    arch: str = "vit_b16"                      # models.vit.VIT_CONFIGS
    # sam: student = teacher = SAM encoder (MRI-CORE); sam_student: the student only, the teacher
    # random (the paper's ablation); dinov2 (BrainFound's start); random (plain DINOv2, no SAM)
    init: str = "sam"
    sam_arch: str = "sam_vit_b"                # models.sam_encoder.SAM_CONFIGS, for init=sam
    epochs: int = 4
    batch_size: int = 128                      # per process (GPU)
    # DINOv2: lr = base_lr · sqrt(global batch / 1024). MRI-CORE ran "smallerlr" (value
    # unpublished); we take base 1e-3 (DINOv2's ViT-L default is 4e-3) — a SAM-initialised
    # network is fine-tuned, not trained from scratch, and the paper found longer/harder
    # training hurt.
    base_lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_epochs: float = 0.5
    weight_decay: tuple[float, float] = (0.04, 0.2)
    momentum: tuple[float, float] = (0.992, 1.0)
    teacher_temp: tuple[float, float] = (0.04, 0.07)
    teacher_temp_warmup_epochs: float = 1.0
    freeze_last_layer_epochs: float = 0.25
    layerwise_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    clip_grad: float = 3.0
    drop_path_rate: float = 0.1
    # DINO / iBOT head (shared), DINOv2 ViT-B defaults
    head_out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    mask_probability: float = 0.5
    # multi-crop
    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    # MRI-CORE's other ablations (paper §4.2.2): each epoch shows every slice once
    # (without_replacement, the paper's choice) or draws n slices with replacement (DINOv2's
    # default); slices min-max normalised on their own (slice, the paper's) or within their
    # series' intensity range (volume)
    sampling: str = "without_replacement"
    normalization: str = "slice"
    # MAE (objective=mae)
    mae_mask_ratio: float = 0.75
    mae_decoder_dim: int = 512
    mae_decoder_depth: int = 8


@dataclass
class VolumeConfig(_Options):
    """A volume recipe: ``method`` (models/ssl3d) on ``roi³`` crops of catalog NIfTI volumes."""

    kind = "volumes"
    method: str = "triad"                      # triad | brainsegfounder | prism
    encoder: str = "swin_b_v2"                 # models.encoders3d configuration
    in_channels: int = 1
    roi: int = 96
    epochs: int = 10
    batch_size: int = 8                        # per process (GPU)
    lr: float = 1e-4                           # absolute (not scaled by batch)
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float = 1.0
    flip_prob: float = 0.2                     # per axis
    # Triad: masked reconstruction + log-ratio alignment with description embeddings
    mask_ratio: float = 0.6
    mask_patch: int = 16
    text_weight: float = 0.01
    ssl_hidden: int = 2048
    # BrainSegFounder: rotation + NT-Xent + inpainting; stage 2 continues at stage2_lr
    contrastive_dim: int = 512
    temperature: float = 0.5
    stage2_lr: float = 6e-6
    # PRISM: anatomy / sequence branches
    sequence_dim: int = 64


_TINY = dict(arch="vit_tiny", sam_arch="sam_tiny", epochs=2, batch_size=8, base_lr=5e-3, warmup_epochs=0.25,
             teacher_temp_warmup_epochs=0.5, freeze_last_layer_epochs=0.0, head_out_dim=256, head_hidden_dim=64,
             head_bottleneck_dim=32, global_size=64, local_size=32, n_local=2, mae_decoder_dim=32,
             mae_decoder_depth=1, drop_path_rate=0.0)

_TINY3D = dict(roi=32, mask_patch=8, ssl_hidden=32, contrastive_dim=32, sequence_dim=16, epochs=2, batch_size=2,
               lr=2e-3, warmup_epochs=0.0)

#: the model side of every named recipe (tasks/pretraining/recipes.py adds the run control)
RECIPES: dict[str, PretrainConfig | VolumeConfig] = {
    "mri-core": PretrainConfig(),
    "mri-core-tiny": PretrainConfig(init="random", **_TINY),
    # the paper's ablation: the same data path and backbone, MAE instead of DINOv2
    "mae": PretrainConfig(objective="mae", base_lr=1.5e-4, warmup_epochs=0.5),
    "mae-tiny": PretrainConfig(objective="mae", init="random", **_TINY),
    # BrainFound: DINOv2 on axial T1/T2/FLAIR stacks (3 × 224²), started from a DINOv2
    # checkpoint (init_weights: the hub ViT-B/14 file; the paper used ViT-L/14); crops 224/98
    # as DINOv2's for patch 14
    "brainfound": PretrainConfig(inputs="contrast_stacks", init="dinov2", arch="vit_b14", local_size=98),
    "brainfound-tiny": PretrainConfig(inputs="contrast_stacks", init="random", **_TINY),
    # Triad (Swin-B v2 or nnU-Net plain conv encoder): masked reconstruction (ratio 0.6,
    # patch 16, 96³) + 0.01 × log-ratio to description embeddings; AdamW (0.9, 0.95),
    # lr 1e-4, wd 0.05, batch 8, 10 epochs (Triad's main_pretrain defaults, text loss on)
    "triad": VolumeConfig(warmup_epochs=1.0),
    "triad-unet": VolumeConfig(encoder="triad_unet", warmup_epochs=1.0),
    # batch 4: the log-ratio term needs three distinct samples per row
    "triad-tiny": VolumeConfig(encoder="swin_tiny_v2", **{**_TINY3D, "batch_size": 4}),
    # BrainSegFounder: SwinUNETR backbone (v1 blocks), rotation + contrastive + inpainting,
    # AdamW lr 4e-4, wd 0.1, batch 2 per GPU; stage 2 at 6e-6 on the second query
    "brainsegfounder": VolumeConfig(method="brainsegfounder", encoder="swin_b", lr=4e-4, weight_decay=0.1,
                                    betas=(0.9, 0.999), batch_size=2, epochs=300, warmup_epochs=1.0),
    "brainsegfounder-tiny": VolumeConfig(method="brainsegfounder", encoder="swin_tiny", **_TINY3D),
    # PRISM: Swin-B v2, lr 5e-4, wd 0.1, axis flips 0.5 (run_pt.sh; batch 18/GPU there)
    "prism": VolumeConfig(method="prism", encoder="swin_b_v2", lr=5e-4, weight_decay=0.1, betas=(0.9, 0.999),
                          batch_size=8, epochs=100, flip_prob=0.5, warmup_epochs=1.0),
    "prism-tiny": VolumeConfig(method="prism", encoder="swin_tiny_v2", flip_prob=0.5, **_TINY3D),
}

