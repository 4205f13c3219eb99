"""Model zoo: every entry loads a synthesised checkpoint in its real layout (tiny archs)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from mrifoundry.atomic import is_temp
from mrifoundry.models import zoo
from mrifoundry.models.heads import DINOHead
from mrifoundry.models.sam_encoder import SAM_CONFIGS, build_sam_encoder
from mrifoundry.models.vit import VIT_CONFIGS, DinoVisionTransformer, resize_pos_grid

SAM_TINY = SAM_CONFIGS["sam_tiny"]
VIT_TINY = VIT_CONFIGS["vit_tiny"]


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


@pytest.fixture(scope="module")
def sam_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    """A full SAM state dict (image_encoder, prompt_encoder, mask_decoder) around sam_tiny."""
    c = SAM_TINY.out_chans
    sam = Sam(
        image_encoder=build_sam_encoder(SAM_TINY),
        prompt_encoder=PromptEncoder(embed_dim=c, image_embedding_size=(4, 4),
                                     input_image_size=(64, 64), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=c, iou_head_depth=1,
                                 iou_head_hidden_dim=8,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=c,
                                                               mlp_dim=16, num_heads=2)),
    )
    sd = _randomise(sam, 0).state_dict()
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth"
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="module")
def mri_core_ckpt(tmp_path_factory) -> tuple[Path, dict, dict]:
    torch.manual_seed(0)
    vit = _randomise(DinoVisionTransformer(VIT_TINY), 1)
    head = DINOHead(64, out_dim=32, hidden_dim=16, bottleneck_dim=8)
    path = zoo.save_mri_core_checkpoint(vit.state_dict(), head.state_dict(),
                                        tmp_path_factory.mktemp("mri") / "MRI_CORE_vitb.pth",
                                        n_chunks=2)
    return path, vit.state_dict(), head.state_dict()


def _images(n=2, size=64, c=3) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(7))


def test_registry():
    assert zoo.available() == ["brainfound", "brainsegfounder", "dinov2-vit-b", "medsam", "mri-core", "prism", "random",
                               "sam-vit-b", "triad-swin", "triad-unet"]
    with pytest.raises(ValueError, match="already registered"):
        zoo.register(zoo.ZOO["random"])
    with pytest.raises(ValueError, match="unknown zoo model"):
        zoo.load("sam-vit-h")


@pytest.mark.parametrize("name,file", [("sam-vit-b", "sam_vit_b_01ec64.pth"),
                                       ("medsam", "medsam_vit_b.pth"),
                                       ("mri-core", "MRI_CORE_vitb.pth"),
                                       ("dinov2-vit-b", "dinov2_vitb14_pretrain.pth")])
def test_weights_none_names_the_expected_file(name, file, tmp_path):
    with pytest.raises(ValueError, match=file):
        zoo.load(name)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        zoo.load(name, tmp_path / "nope.pth")


def test_sam_vit_b_keeps_only_the_image_encoder(sam_ckpt):
    path, sd = sam_ckpt
    m = zoo.load("sam-vit-b", path, arch="sam_tiny")
    assert (m.family, m.image_size, m.embed_dim, m.patch_size) == ("sam", 64, 64, 16)
    assert m.mean == zoo.IMAGENET_MEAN and not m.encoder.training
    enc = m.encoder.state_dict()
    assert enc.keys() == {k[len("image_encoder."):] for k in sd if k.startswith("image_encoder.")}
    assert all(torch.equal(v, sd[f"image_encoder.{k}"]) for k, v in enc.items())
    x = _images()
    assert m.embed(x).shape == (2, 64, 4, 4)
    assert m.embed(x, layer="neck").shape == (2, SAM_TINY.out_chans, 4, 4)
    assert m.pooled(x).shape == (2, 64)
    torch.testing.assert_close(m.pooled(x), m.embed(x).mean(dim=(2, 3)))
    # grayscale and other sizes are resized / expanded to the model's input
    assert m.embed(_images(1, 80, 1)).shape == (1, 64, 4, 4)
    with pytest.raises(ValueError, match="cls"):
        m.pooled(x, pool="cls")


def test_sam_image_size_resizes_positions(sam_ckpt):
    path, sd = sam_ckpt
    m = zoo.load("sam-vit-b", path, arch="sam_tiny", image_size=128)
    assert m.image_size == 128
    pos = m.encoder.pos_embed.detach()
    assert pos.shape == (1, 8, 8, 64)
    assert torch.equal(pos, resize_pos_grid(sd["image_encoder.pos_embed"], (8, 8)))
    assert m.encoder.blocks[1].attn.rel_pos_h.shape == (15, 32)  # global block
    assert m.embed(_images()).shape == (2, 64, 8, 8)


def test_medsam_uses_unit_range_inputs(sam_ckpt):
    path, _ = sam_ckpt
    m = zoo.load("medsam", path, arch="sam_tiny")
    assert m.mean == (0.0, 0.0, 0.0) and m.std == (1.0, 1.0, 1.0)
    x = _images()
    torch.testing.assert_close(m.preprocess(x), x)
    assert m.embed(x).shape == (2, 64, 4, 4)


def test_save_mri_core_checkpoint_layout(mri_core_ckpt):
    path, vit_sd, head_sd = mri_core_ckpt
    raw = torch.load(path, weights_only=True)
    assert list(raw) == ["teacher"]
    t = raw["teacher"]
    assert "backbone.blocks.0.0.norm1.weight" in t and "backbone.blocks.1.1.mlp.fc1.weight" in t
    assert {"backbone.cls_token", "backbone.pos_embed", "backbone.mask_token",
            "backbone.norm.weight", "dino_head.last_layer.weight_g"} <= set(t)
    assert len(t) == len(vit_sd) + len(head_sd)
    assert not [p for p in path.parent.iterdir() if is_temp(p.name)]   # no temp left by the atomic write


def test_mri_core_round_trip(mri_core_ckpt):
    path, vit_sd, _ = mri_core_ckpt
    m = zoo.load("mri-core", path, arch="vit_tiny")
    assert (m.family, m.image_size, m.embed_dim) == ("dinov2", 64, 64)
    got = m.encoder.state_dict()
    assert got.keys() == vit_sd.keys() and all(torch.equal(got[k], vit_sd[k]) for k in got)
    x = _images()
    assert m.embed(x).shape == (2, 64, 4, 4)
    assert m.pooled(x, pool="cls").shape == (2, 64)
    with pytest.raises(ValueError, match="neck"):
        m.embed(x, layer="neck")
    # the default chunking (4) on a 2-block model also loads
    again = zoo.save_mri_core_checkpoint(vit_sd, {}, path.parent / "four.pth")
    got = zoo.load("mri-core", again, arch="vit_tiny").encoder.state_dict()
    assert all(torch.equal(got[k], vit_sd[k]) for k in got)


def test_mri_core_as_sam(mri_core_ckpt, sam_ckpt):
    path, vit_sd, _ = mri_core_ckpt
    sam_path, sam_sd = sam_ckpt
    m = zoo.load("mri-core", path, arch="sam_tiny", image_size=128, as_sam=True)
    assert (m.family, m.image_size) == ("sam", 128)
    expected = resize_pos_grid(vit_sd["pos_embed"][:, 1:].reshape(1, 4, 4, 64), (8, 8))
    assert torch.equal(m.encoder.pos_embed.detach(), expected)
    assert set(m.missing_keys) == {k for k in m.encoder.state_dict()
                                   if k.startswith("neck.") or "rel_pos" in k}
    assert m.embed(_images(), layer="neck").shape == (2, 32, 8, 8)
    # neck (and rel_pos) from SAM, as upstream's pretrained_sam=True
    m = zoo.load("mri-core", path, arch="sam_tiny", as_sam=True, sam_init=sam_path)
    assert m.missing_keys == ()
    assert torch.equal(m.encoder.neck[0].weight, sam_sd["image_encoder.neck.0.weight"])
    with pytest.raises(ValueError, match="sam_init only"):
        zoo.load("mri-core", path, arch="vit_tiny", sam_init=sam_path)


def test_dinov2_official_layout_with_layerscale(tmp_path):
    torch.manual_seed(0)
    vit = _randomise(DinoVisionTransformer(replace(VIT_TINY, layerscale=1e-5)), 2)
    sd = vit.state_dict()  # hub release: bare, unchunked keys with ls1/ls2
    path = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save(sd, path)
    m = zoo.load("dinov2-vit-b", path, arch="vit_tiny", image_size=96)
    got = m.encoder.state_dict()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in got)
    assert m.embed(_images()).shape == (2, 64, 6, 6)  # 96 px: positions interpolated


def test_random_is_seeded_and_takes_no_weights(tmp_path):
    state = torch.random.get_rng_state()
    a = zoo.load("random", arch="vit_tiny", seed=3).encoder.state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)  # caller's RNG untouched
    b = zoo.load("random", arch="vit_tiny", seed=3).encoder.state_dict()
    c = zoo.load("random", arch="vit_tiny", seed=4).encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["pos_embed"], c["pos_embed"])
    with pytest.raises(ValueError, match="takes no weights"):
        zoo.load("random", tmp_path / "x.pth")
    with pytest.raises(ValueError, match="options"):
        zoo.load("random", arch="vit_tiny", as_sam=True)


def test_volume_models_pad_to_32_and_take_series_not_slices(tmp_path):
    from pathlib import Path

    from mrifoundry.models.encoders3d import build_encoder3d
    from mrifoundry.models.zoo3d import VolumeZooModel
    from mrifoundry.tasks.evaluation.embedding import extract_features
    m = VolumeZooModel("v", build_encoder3d("unet_tiny"))
    vol = torch.rand(1, 1, 33, 20, 64) + 0.1
    x = m.preprocess(vol)
    assert x.shape == (1, 1, 64, 32, 64)            # 33 → 64 (15 before, 16 after), 20 → 32 (6 and 6)
    assert torch.equal(x[:, :, 15:48, 6:26], vol) and x.abs().sum() == vol.abs().sum()
    with pytest.raises(ValueError, match="no patch grids"):
        extract_features(Path(tmp_path), "SELECT 1 AS series_id", m, "vols", patch_grids=True)
