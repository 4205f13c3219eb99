"""One model resolution for every evaluation: a :class:`mrifoundry.params.ModelChoice` → a model.

A choice is a zoo entry with local weights (``{home}`` expands to MRIFOUNDRY_HOME; none = random
init), or ``pretrained=<model_id>``: a ``pretrain`` run of the catalog's ``models`` table, loaded
through the zoo entry of its method from its latest checkpoint (tasks/pretraining/pretrained.py).
Three shapes of result, one resolution (:func:`resolve_choice`):

- :func:`load_model`: a frozen zoo model (features, probing, zero-shot);
- :func:`fewshot_factory`: fresh few-shot SAMs (adapters, LoRA or full fine-tuning);
- :func:`volume_encoder_factory`: fresh 3D encoders (3D fine-tuning, classification).
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from mrifoundry.errors import NotFound, UsageError
from mrifoundry import settings
from mrifoundry.params import ModelChoice
from mrifoundry.tasks.evaluation.embedding import weights_digest
from mrifoundry.tasks.pretraining.pretrained import PretrainedRun, pretrained_run

__all__ = ["Loaded", "RANDOM_INIT_ARCH", "Resolved", "SAM_ARCH_FOR_VIT", "choice_of", "fewshot_factory", "load_model",
           "resolve_choice", "volume_encoder_factory"]

#: the architecture a volume zoo entry is randomly initialised with when no weights are given
RANDOM_INIT_ARCH = {"triad-unet": "triad_unet", "triad-swin": "swin_b_v2", "brainsegfounder": "swin_b",
                    "prism": "swin_b_v2"}
#: the SAM fork preset that holds a pretrain run's ViT (few-shot adapts a SAM encoder)
SAM_ARCH_FOR_VIT = {"vit_tiny": "sam_tiny", "vit_b16": "mri_core_sam"}


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A choice with the pretrain run looked up: what to load and how to label it."""

    entry: str                  # zoo entry name
    weights: str | None         # local file ({home} expanded), or None = random init
    arch: str | None
    label: str                  # the ``model`` of the evaluation rows: the run id or the entry
    run: PretrainedRun | None   # the pretrain run, when the choice names one

    @property
    def weights_sha(self) -> str:
        return weights_digest(self.weights)


@dataclasses.dataclass(frozen=True)
class Loaded:
    """What an evaluation needs: the model (or a factory of fresh copies), its label and weights digest."""

    model: object
    label: str
    weights_sha: str
    weights: str | None
    provenance: dict = dataclasses.field(default_factory=dict)  # few-shot: mode and the decoder's source


def resolve_choice(research: Path, choice: ModelChoice) -> Resolved:
    """The zoo entry, weights and arch of ``choice``.

    Raises:
        LookupError: ``pretrained`` names no run with a checkpoint in the catalog.
    """
    if choice.pretrained:
        run = pretrained_run(Path(research), choice.pretrained)
        return Resolved(run.entry, run.checkpoint, run.arch, choice.pretrained, run)
    return Resolved(choice.model, settings.expand_home(choice.weights), choice.arch, choice.model, None)


def load_model(research: Path, choice: ModelChoice, *, image_size: int | None = None, seed: int = 0,
               device: str | None = None) -> Loaded:
    """A frozen zoo model (models.zoo.load) on ``device`` (default: CUDA when there is one);
    ``random`` is seeded with ``seed``."""
    import torch

    from mrifoundry.models import zoo
    r = resolve_choice(research, choice)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    opts = {"seed": seed} if r.entry == "random" else {}
    m = zoo.load(r.entry, r.weights, arch=r.arch, image_size=image_size, device=device, **opts)
    return Loaded(m, r.label, r.weights_sha, r.weights)


def fewshot_factory(research: Path, choice: ModelChoice, *, image_size: int, encoder_adapter_depths,
                    seed: int = 0, mode: str = "adapter", lora_rank: int = 4, sam_checkpoint: str | None = None,
                    random_decoder: bool = False) -> Loaded:
    """A factory of fresh few-shot SAMs (one per repeat), fine-tuned as ``mode`` says.

    A pretrain run or ``mri-core`` loads into MRI-CORE's SAM fork with the pos_embed fixed;
    ``random`` is a seeded random SAM encoder (the baseline). The prompt encoder and mask
    decoder load from ``sam_checkpoint`` ({home} expands), as MRI-CORE starts from SAM's; without
    one the run is refused unless ``random_decoder``. ``provenance``: ``mode``,
    ``decoder_source`` (the checkpoint's file name, or ``random``), ``decoder_sha256`` (16 hex,
    as ``weights_sha256``), ``decoder_random_keys`` (the decoder state-dict keys left random),
    ``trainable_params``.

    Raises:
        UsageError: no decoder checkpoint and not ``random_decoder``; not a SAM-family model;
            a checkpoint that does not fit the encoder.
        NotFound: ``sam_checkpoint`` is not a file.
    """
    import torch

    from mrifoundry.models import zoo
    from mrifoundry.models.adapters import build_sam_for_fewshot
    from mrifoundry.models.sam_encoder import SAM_CONFIGS, build_sam_encoder
    r = resolve_choice(research, choice)
    ckpt = settings.expand_home(sam_checkpoint)
    if ckpt is None and not random_decoder:
        raise UsageError(f"few-shot of {r.label!r} needs SAM's prompt encoder and mask decoder: give "
                         "--sam-checkpoint PATH (e.g. sam_vit_b_01ec64.pth), or --random-decoder to train from a "
                         "random decoder")
    if ckpt is not None and not Path(ckpt).is_file():
        raise NotFound(f"SAM checkpoint {ckpt} is not a file")
    entry, arch = r.entry, r.arch
    if r.run is not None:
        if r.run.entry != "mri-core":
            raise UsageError(f"{r.label!r} is a {r.run.objective} volume encoder; few-shot adapts a 2D SAM encoder")
        entry, arch = "mri-core", SAM_ARCH_FOR_VIT.get(r.arch, r.arch)
    if entry == "random":
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            source = build_sam_encoder(dataclasses.replace(SAM_CONFIGS[arch or "sam_vit_b"], img_size=image_size))
    else:
        opts = {"as_sam": True} if entry == "mri-core" else {}
        source = zoo.load(entry, r.weights, arch=arch, image_size=image_size, **opts)

    def factory():
        return build_sam_for_fewshot(source, image_size, sam_checkpoint=ckpt, mode=mode, lora_rank=lora_rank,
                                     encoder_adapter_depths=encoder_adapter_depths)
    try:
        with torch.random.fork_rng():   # one build up front: errors now, and what stayed random
            probe = factory()
    except TypeError as e:
        raise UsageError(f"few-shot fine-tunes a SAM-family encoder, not {r.label!r} ({e})") from None
    except ValueError as e:
        raise UsageError(str(e)) from None
    provenance = {"mode": probe.mode, "decoder_source": Path(ckpt).name if ckpt else "random",
                  "decoder_sha256": weights_digest(ckpt), "decoder_random_keys": list(probe.decoder_missing_keys),
                  "trainable_params": sum(p.numel() for p in probe.parameters() if p.requires_grad)}
    del probe
    return Loaded(factory, r.label, r.weights_sha, r.weights, provenance)


def volume_encoder_factory(research: Path, choice: ModelChoice, *, in_channels: int) -> Loaded:
    """A factory of fresh copies of a volume encoder.

    Weights (or a pretrain run) load through the zoo; no weights: a random init of ``arch``
    (default :data:`RANDOM_INIT_ARCH`), label ``<model>-random``. When the weights have other
    input channels than the data, the input layer is re-initialised (models.seg3d.with_in_channels)
    and the rest kept.

    Raises:
        ValueError: a model that is not a volume zoo entry.
    """
    from mrifoundry.models import zoo
    from mrifoundry.models.encoders3d import build_encoder3d
    from mrifoundry.models.seg3d import with_in_channels
    r = resolve_choice(research, choice)
    if r.entry not in RANDOM_INIT_ARCH:
        raise UsageError(f"{r.entry!r} is not a volume encoder; one of {sorted(RANDOM_INIT_ARCH)}")
    if r.weights is None:
        name = r.arch or RANDOM_INIT_ARCH[r.entry]

        def factory():  # built on each call, so the caller's seed decides the init
            return build_encoder3d(name, in_channels=in_channels)
        return Loaded(factory, f"{r.label}-random", r.weights_sha, None)
    encoder = zoo.load(r.entry, r.weights, arch=r.arch).encoder

    def factory():  # a fresh copy; a re-initialised input layer draws from the caller's seed
        return with_in_channels(copy.deepcopy(encoder), in_channels)[0]
    return Loaded(factory, r.label, r.weights_sha, r.weights)


def choice_of(params) -> ModelChoice:
    """The ModelChoice fields of a pipeline's params (which subclass ModelChoice)."""
    return ModelChoice(**{k: getattr(params, k) for k in ModelChoice.model_fields})

