"""Adapters for SAM (MRI-CORE's few-shot recipe) and a prompt-free SAM for segmentation.

MRI-CORE fine-tunes SAM with bottleneck adapters (its ``finetune_type='adapter'``, shared with
finetune-SAM): in encoder blocks ``[0, 1, 10, 11]`` and in both decoder ``TwoWayAttentionBlock``s;
only adapter parameters train. This module reproduces the placement on the installed
``segment_anything`` modules without editing them: an adapted block's class is switched to a
subclass whose ``forward`` adds the adapters, and the adapters become child modules. Every
original parameter keeps its state-dict key, so SAM checkpoints still load after adaptation.
:func:`build_sam_for_fewshot` also builds the two other ways to fine-tune: finetune-SAM's LoRA
(``models/lora.py``) and full fine-tuning (``mode``).

Differences from MRI-CORE (deliberate): the adapter's up projection is zero-initialised (see
:class:`Adapter`); the mask decoder is built here with ``num_classes`` + 1 mask tokens, as
MRI-CORE's fork does for ``num_cls``, and called one image at a time (see :class:`FewShotSam`).
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition
from segment_anything.modeling.transformer import TwoWayAttentionBlock
from torch import Tensor, nn

from mrifoundry.models.checkpoints import load_state
from mrifoundry.models.imagenet import IMAGENET_MEAN, IMAGENET_STD
from mrifoundry.models.lora import add_encoder_lora

__all__ = ["Adapter", "AdaptedBlock", "AdaptedTwoWayBlock", "FewShotSam", "MRI_CORE_ENCODER_DEPTHS",
           "add_encoder_adapters", "add_decoder_adapters", "freeze_all_but_adapters",
           "adapter_parameter_names", "build_sam_for_fewshot", "decoder_keys", "FEWSHOT_MODES",
           "TIED_TO_MASK_TOKENS"]

log = logging.getLogger(__name__)

MRI_CORE_ENCODER_DEPTHS: tuple[int, ...] = (0, 1, 10, 11)
MLP_ADAPTER_SCALE = 0.5  # MRI-CORE / finetune-SAM scale the parallel MLP adapter by 0.5
FEWSHOT_MODES = ("adapter", "lora", "full")


class Adapter(nn.Module):
    """Bottleneck adapter ``x ↦ [x +] up(GELU(down(x)))`` on the last dimension.

    ``down``: dim → int(dim·ratio), ``up``: back to dim. The up projection starts at zero, so a
    fresh adapter is the identity (``skip=True``) or outputs zero (``skip=False``): inserting
    adapters leaves the pretrained network's output unchanged and training starts from it.
    MRI-CORE leaves both projections at PyTorch's default init, which perturbs the pretrained
    features from the first step; ``zero_init=False`` reproduces that.
    """

    def __init__(self, dim: int, ratio: float = 0.25, skip: bool = True, zero_init: bool = True) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        if hidden < 1:
            raise ValueError(f"adapter hidden size int({dim}*{ratio}) < 1")
        self.skip = skip
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        if zero_init:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = self.up(self.act(self.down(x)))
        return x + y if self.skip else y


def _new_adapter(like: nn.Module, dim: int, ratio: float, skip: bool, zero_init: bool) -> Adapter:
    p = next(like.parameters())
    return Adapter(dim, ratio, skip=skip, zero_init=zero_init).to(device=p.device, dtype=p.dtype)


class AdaptedBlock(Block):
    """SAM encoder ``Block`` with MRI-CORE's adapters.

    ``x = x + space_adapter(attn(norm1(x)))`` (adapter with skip, on the attention output before
    the residual); ``x = x + mlp(norm2(x)) + 0.5·mlp_adapter(norm2(x))`` (adapter without skip,
    parallel to the MLP). Made from an existing block by :meth:`adapt` (no copy).
    """

    space_adapter: Adapter
    mlp_adapter: Adapter

    @classmethod
    def adapt(cls, block: Block, ratio: float = 0.25, zero_init: bool = True) -> AdaptedBlock:
        if isinstance(block, AdaptedBlock):
            raise ValueError("block already has adapters")
        if type(block) is not Block:
            raise TypeError(f"expected segment_anything Block, got {type(block).__name__}")
        dim = block.norm1.normalized_shape[0]
        # the class switch keeps the block's own parameters (and their keys) untouched
        block.__class__ = cls
        block.space_adapter = _new_adapter(block, dim, ratio, True, zero_init)
        block.mlp_adapter = _new_adapter(block, dim, ratio, False, zero_init)
        block.mlp_adapter_scale = MLP_ADAPTER_SCALE
        return block

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        h = self.norm1(x)
        if self.window_size > 0:
            size = (h.shape[1], h.shape[2])
            h, pad_hw = window_partition(h, self.window_size)
            h = self.attn(h)
            h = window_unpartition(h, self.window_size, pad_hw, size)
        else:
            h = self.attn(h)
        x = shortcut + self.space_adapter(h)
        h = self.norm2(x)
        return x + self.mlp(h) + self.mlp_adapter_scale * self.mlp_adapter(h)


class AdaptedTwoWayBlock(TwoWayAttentionBlock):
    """SAM decoder ``TwoWayAttentionBlock`` with finetune-SAM / MRI-CORE's decoder adapters.

    ``adapter`` (with skip) is applied to the queries after the token→image residual (before
    ``norm2``) and the same module again to the keys after the image→token residual (before
    ``norm4``); ``mlp_adapter`` (no skip) runs parallel to the token MLP, scaled 0.5:
    ``queries = queries + mlp(queries) + 0.5·mlp_adapter(queries)``. Self-attention is unchanged.
    """

    adapter: Adapter
    mlp_adapter: Adapter

    @classmethod
    def adapt(cls, block: TwoWayAttentionBlock, ratio: float = 0.25,
              zero_init: bool = True) -> AdaptedTwoWayBlock:
        if isinstance(block, AdaptedTwoWayBlock):
            raise ValueError("block already has adapters")
        if type(block) is not TwoWayAttentionBlock:
            raise TypeError(f"expected segment_anything TwoWayAttentionBlock, got {type(block).__name__}")
        dim = block.norm1.normalized_shape[0]
        block.__class__ = cls
        block.adapter = _new_adapter(block, dim, ratio, True, zero_init)
        block.mlp_adapter = _new_adapter(block, dim, ratio, False, zero_init)
        block.mlp_adapter_scale = MLP_ADAPTER_SCALE
        return block

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        k = keys + key_pe
        queries = queries + self.cross_attn_token_to_image(q=queries + query_pe, k=k, v=keys)
        queries = self.norm2(self.adapter(queries))

        queries = queries + self.mlp(queries) + self.mlp_adapter_scale * self.mlp_adapter(queries)
        queries = self.norm3(queries)

        q = queries + query_pe
        keys = keys + self.cross_attn_image_to_token(q=k, k=q, v=queries)
        keys = self.norm4(self.adapter(keys))
        return queries, keys


def add_encoder_adapters(encoder: ImageEncoderViT, depths: Iterable[int] = MRI_CORE_ENCODER_DEPTHS,
                         ratio: float = 0.25, zero_init: bool = True) -> tuple[int, ...]:
    """Put adapters into ``encoder.blocks[d]`` for each ``d`` in ``depths`` (in place).

    Depths ``>= len(encoder.blocks)`` are skipped (logged), so MRI-CORE's ViT-B depths
    ``(0, 1, 10, 11)`` give ``(0, 1)`` on a 2-block test encoder; depths are not remapped to
    the last blocks. Returns the depths adapted, sorted.

    Raises:
        ValueError: a negative depth, or a block that already has adapters.
    """
    depths = sorted(set(int(d) for d in depths))
    if any(d < 0 for d in depths):
        raise ValueError(f"negative encoder depth in {depths}")
    n = len(encoder.blocks)
    used = tuple(d for d in depths if d < n)
    if len(used) < len(depths):
        log.info("encoder has %d blocks: adapter depths %s skipped", n, [d for d in depths if d >= n])
    for d in used:
        AdaptedBlock.adapt(encoder.blocks[d], ratio, zero_init)
    return used


def add_decoder_adapters(mask_decoder: MaskDecoder, ratio: float = 0.25, zero_init: bool = True) -> int:
    """Put adapters into every ``TwoWayAttentionBlock`` of the decoder's transformer (SAM has 2,
    MRI-CORE's ``decoder_adapt_depth=2`` adapts both). Returns the number adapted. The final
    token→image attention of ``TwoWayTransformer`` gets none, as upstream."""
    layers = mask_decoder.transformer.layers
    for blk in layers:
        AdaptedTwoWayBlock.adapt(blk, ratio, zero_init)
    return len(layers)


def adapter_parameter_names(model: nn.Module) -> list[str]:
    """Parameter names MRI-CORE's 'adapter' mode trains: those containing "adapter"."""
    return [n for n, _ in model.named_parameters() if "adapter" in n.lower()]


def freeze_all_but_adapters(model: nn.Module) -> int:
    """Freeze every parameter whose name lacks "adapter" (case-insensitive), unfreeze the rest.

    Returns the number of trainable parameter elements. As in MRI-CORE, re-initialised decoder
    parts (mask tokens, hypernetwork MLPs) stay frozen too.

    Raises:
        ValueError: the model has no adapter parameters (nothing would train).
    """
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_("adapter" in name.lower())
        n += p.numel() if p.requires_grad else 0
    if n == 0:
        raise ValueError("no parameter name contains 'adapter': add adapters first")
    return n


class FewShotSam(Sam):
    """SAM without prompts: ``forward(images) -> low-res mask logits [B, num_classes, h, w]``.

    ``images``: ``[B, 1|3, S, S]`` in [0, 1] at the encoder's ``img_size`` (grayscale is
    repeated to 3 channels), normalised here with ``pixel_mean`` / ``pixel_std`` — which, unlike
    upstream ``Sam``, are in [0, 1] units. ``h = w = 4 × token grid`` (256 at 1024 px).
    The decoder sees no points and no boxes (empty sparse embeddings) and the learned no-mask
    dense embedding, exactly what ``PromptEncoder`` returns for no prompts; it runs once per
    image because ``MaskDecoder`` repeats the image embedding per prompt batch.
    Unlike ``Sam.forward`` this forward is differentiable.
    """

    def forward(self, images: Tensor) -> Tensor:  # type: ignore[override]
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B, 1|3, S, S], got {tuple(images.shape)}")
        size = self.image_encoder.img_size
        if tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"images must be {size}x{size}, got {tuple(images.shape[-2:])}")
        x = images.to(self.pixel_mean.dtype).expand(-1, 3, -1, -1)
        emb = self.image_encoder((x - self.pixel_mean) / self.pixel_std)
        sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None)
        pe = self.prompt_encoder.get_dense_pe()
        out = [self.mask_decoder(image_embeddings=e[None], image_pe=pe, sparse_prompt_embeddings=sparse,
                                 dense_prompt_embeddings=dense, multimask_output=True)[0]
               for e in emb]
        return torch.cat(out)


def _decoder_heads(dim: int) -> int:
    # SAM: 8 heads on 256 channels, attention downsampled ×2 → 128 internal, 8 | 128
    for h in (8, 4, 2, 1):
        if (dim // 2) % h == 0:
            return h
    return 1


DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")
#: decoder tensors tied to the number of mask tokens: dropped when it differs (MRI-CORE's load_from)
TIED_TO_MASK_TOKENS = ("mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.",
                       "mask_decoder.iou_prediction_head.")


def decoder_keys(sam: nn.Module) -> list[str]:
    """The prompt-encoder and mask-decoder state-dict keys of ``sam``, sorted, adapters and LoRA excluded."""
    return sorted(k for k in sam.state_dict() if k.startswith(DECODER_PREFIXES)
                  and "adapter" not in k.lower() and ".lora_" not in k)


def _load_decoder_weights(sam: FewShotSam, path: Path) -> list[str]:
    ckpt = load_state(path, ("model", "state_dict"))
    target = sam.state_dict()
    src = {k: v for k, v in ckpt.items() if k.startswith(DECODER_PREFIXES)}
    if not src:
        raise ValueError(f"{path.name}: no prompt_encoder.* / mask_decoder.* keys (not a SAM checkpoint?)")
    if src.get("mask_decoder.mask_tokens.weight", target["mask_decoder.mask_tokens.weight"]).shape != \
            target["mask_decoder.mask_tokens.weight"].shape:
        # num_classes != 3: like MRI-CORE's load_from, drop everything tied to the mask tokens
        src = {k: v for k, v in src.items() if not k.startswith(TIED_TO_MASK_TOKENS)}
    bad = sorted(k for k, v in src.items() if k in target and v.shape != target[k].shape)
    if bad:
        # e.g. a ViT-B SAM (256 channels) for a tiny encoder: nothing would load, silently
        raise ValueError(f"{path.name}: {len(bad)} decoder tensors do not fit this encoder's width "
                         f"({bad[0]}: {tuple(src[bad[0]].shape)} vs {tuple(target[bad[0]].shape)})")
    ok = {k: v for k, v in src.items() if k in target}
    sam.load_state_dict(ok, strict=False)
    return [k for k in decoder_keys(sam) if k not in ok]


def build_sam_for_fewshot(zoo_model_or_encoder, image_size: int, num_classes: int = 1, *,
                          sam_checkpoint: str | Path | None = None, adapters: bool = True,
                          mode: str | None = None, lora_rank: int = 4,
                          encoder_adapter_depths: Sequence[int] = MRI_CORE_ENCODER_DEPTHS,
                          adapter_ratio: float = 0.25, zero_init: bool = True,
                          mean: Sequence[float] | None = None,
                          std: Sequence[float] | None = None) -> FewShotSam:
    """A full SAM (our encoder + ``PromptEncoder`` + ``MaskDecoder``/``TwoWayTransformer``).

    Args:
        zoo_model_or_encoder: a SAM-family ``ZooModel`` (its mean/std are used) or an
            ``ImageEncoderViT``. The encoder is deep-copied, so the caller's is never modified.
        image_size: input size; must equal the encoder's ``img_size`` (load the zoo model at it).
        num_classes: mask channels; the decoder gets ``num_classes + 1`` mask tokens and
            ``multimask_output=True`` keeps the last ``num_classes`` (MRI-CORE's ``num_cls``).
        sam_checkpoint: local SAM checkpoint for ``prompt_encoder.*`` / ``mask_decoder.*``
            (when the mask-token count differs from the checkpoint's, i.e. ``num_classes != 3``,
            mask tokens, hypernetwork MLPs and IoU head stay random, as in MRI-CORE; other
            tensors load; a tensor of another shape is a ValueError). None: the decoder is random.
            ``model.decoder_missing_keys``: the decoder keys that stayed random (all of them
            without a checkpoint), adapters and LoRA excluded.
        mode: what trains (``model.mode``):
            ``adapter`` — MRI-CORE: encoder adapters at ``encoder_adapter_depths`` (depths past
            the encoder's are skipped) and decoder adapters; everything else frozen.
            ``lora`` — finetune-SAM: LoRA of rank ``lora_rank`` on q and v of every encoder
            block (models/lora.py), the rest of the encoder frozen; prompt encoder and mask
            decoder fully trainable (finetune-SAM's ``LoRA_Sam`` freezes only the image
            encoder; its decoder LoRA, ``if_decoder_lora_layer``, is off by default).
            ``full`` — every parameter trainable.
            None: ``adapter`` if ``adapters`` else ``full`` (the older switch).
        mean, std: per-channel normalisation in [0, 1] units; default the zoo model's, else
            ImageNet's.

    Decoder sizes follow SAM's ratios for ``d = encoder out_chans``: 2 two-way blocks, MLP
    ``8d``, IoU head hidden ``d``; 8 heads when ``d/2`` allows (SAM: d=256).
    """

    if isinstance(zoo_model_or_encoder, ImageEncoderViT):
        encoder, zmean, zstd = zoo_model_or_encoder, IMAGENET_MEAN, IMAGENET_STD
    elif isinstance(getattr(zoo_model_or_encoder, "encoder", None), ImageEncoderViT):
        z = zoo_model_or_encoder
        encoder, zmean, zstd = z.encoder, z.mean, z.std
    else:
        raise TypeError("expected a SAM-family ZooModel or an ImageEncoderViT "
                        "(load mri-core with as_sam=True)")
    if encoder.img_size != image_size:
        raise ValueError(f"encoder is built for {encoder.img_size} px, not {image_size}: "
                         f"load the zoo model with image_size={image_size}")
    if num_classes < 1:
        raise ValueError("num_classes must be >= 1")
    encoder = copy.deepcopy(encoder)
    dim = encoder.neck[0].out_channels
    patch = encoder.patch_embed.proj.kernel_size[0]
    grid = image_size // patch
    prompt = PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                           input_image_size=(image_size, image_size), mask_in_chans=16)
    decoder = MaskDecoder(
        transformer_dim=dim, num_multimask_outputs=num_classes, iou_head_depth=3, iou_head_hidden_dim=dim,
        transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=8 * dim, num_heads=_decoder_heads(dim)))
    p = next(encoder.parameters())
    sam = FewShotSam(encoder, prompt, decoder, pixel_mean=list(mean or zmean),
                     pixel_std=list(std or zstd)).to(device=p.device)
    mode = mode or ("adapter" if adapters else "full")
    if mode not in FEWSHOT_MODES:
        raise ValueError(f"mode {mode!r}: one of {FEWSHOT_MODES}")
    if sam_checkpoint is not None:
        sam.decoder_missing_keys = _load_decoder_weights(sam, Path(sam_checkpoint))
        if sam.decoder_missing_keys:
            log.info("decoder tensors left random: %s", ", ".join(sam.decoder_missing_keys))
    else:
        sam.decoder_missing_keys = decoder_keys(sam)
    sam.mode, sam.encoder_adapter_depths, sam.lora_blocks = mode, (), ()
    if mode == "adapter":
        sam.encoder_adapter_depths = add_encoder_adapters(sam.image_encoder, encoder_adapter_depths,
                                                          adapter_ratio, zero_init)
        add_decoder_adapters(sam.mask_decoder, adapter_ratio, zero_init)
        freeze_all_but_adapters(sam)
    elif mode == "lora":
        sam.lora_blocks = add_encoder_lora(sam.image_encoder, lora_rank)
        for name, q in sam.named_parameters():
            q.requires_grad_(not name.startswith("image_encoder.") or ".lora_" in name)
    else:
        for q in sam.parameters():
            q.requires_grad_(True)
    return sam
