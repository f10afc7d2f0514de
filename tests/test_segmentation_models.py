"""Segmentation models: the Swin backbone (output norms, frozen stages, any size, gradient checkpointing, pad vs
clamp windows), UPerNet / semantic FPN models, parity with transformers' UperNetForSemanticSegmentation, the
checkpoint formats (swinkit, official Swin-Transformer-Semantic-Segmentation, mmseg, transformers) and their round
trips, published parameters and FLOPs, and the errors."""
import copy
import re

import pytest
import torch
import torch.nn.functional as F

import swinkit
from swinkit import SegmentationConfig, SegmentationModel, SwinBackbone, SwinConfig
from swinkit.config import SEG_VARIANTS
from swinkit.io.formats.segmentation import (write_segmentation_checkpoint, convert_segmentation_state_dict, detect_segmentation_format,
                                segmentation_from_swinkit)

from conftest import FIXTURES, randomize_

# 4 stages, window 4: at 256 px every stage map (64, 32, 16, 8) is a window multiple larger than the window; at
# 162 x 171 (patch padding too) they are 41x43, 21x22, 11x11, 6x6: padded in every block, all larger than the window
BACKBONE = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=4, drop_path_rate=0.0)
HEADS = dict(num_classes=5, channels=32, aux_channels=16, fpn_channels=24)
EVEN, PADDED = (256, 256), (162, 171)


def backbone_cfg(**kw) -> SwinConfig:
    return SwinConfig(**{**BACKBONE, "window_mode": "pad", **kw})


def seg_model(head: str = "upernet", **kw) -> SegmentationModel:
    """A tiny segmentation model with random weights and BatchNorm statistics, in eval mode."""
    backbone = kw.pop("backbone", backbone_cfg())
    model = SegmentationModel(SegmentationConfig(backbone=backbone, head=head, **{**HEADS, **kw}))
    return random_bn_(randomize_(model, std=0.2)).eval()


def random_bn_(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
    return model


def hf_upernet(version: int = 1):
    """transformers' UperNet on a tiny Swin / Swinv2 backbone (Swinv2 clamps its windows to the stage maps of
    image_size: 256 px keeps them all larger than the window)."""
    transformers = pytest.importorskip("transformers")
    swin = transformers.SwinConfig if version == 1 else transformers.Swinv2Config
    bc = swin(image_size=256, embed_dim=16, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4], window_size=4,
              out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = transformers.UperNetConfig(backbone_config=bc, hidden_size=32, auxiliary_channels=16, num_labels=5)
    return random_bn_(randomize_(transformers.UperNetForSemanticSegmentation(cfg), std=0.2)).eval()


def run(model, x):
    with torch.no_grad():
        return model(x)


def assert_same_state(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------------------------------------
# parity with transformers


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("size", [EVEN, PADDED], ids=["window-multiple", "padded"])
def test_transformers_upernet_parity(size, version, tmp_path):
    """Random transformers UperNet -> load_model (format detected; V1: its state dict alone in a file, the config
    from the keys; V2, whose weights do not record the window: save_pretrained's directory) -> the same decode
    and auxiliary logits."""
    hf = hf_upernet(version)
    if version == 1:
        path = tmp_path / "upernet.pth"
        torch.save(hf.state_dict(), path)
    else:
        path = tmp_path / "hf"
        hf.save_pretrained(path)
    model = swinkit.load_model(path)
    assert isinstance(model, SegmentationModel) and model.cfg.backbone.window_mode == "pad"
    assert model.cfg.backbone.version == version and model.cfg.out_norms == (version == 1)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = hf(pixel_values=x)
        logits, aux = model.forward_with_aux(x)
        exact = copy.deepcopy(hf).double()(pixel_values=x.double()).logits
        ours_exact = copy.deepcopy(model).double()(x.double())
    ref_aux = F.interpolate(hf.auxiliary_head(hf.backbone(x).feature_maps), size=size, mode="bilinear")
    assert logits.shape == (2, 5, *size) and out.logits.std() > 0.1  # not a degenerate comparison
    # In float64 the two are the same function: float64 rounds 2^29 times finer than float32, so the float32 bound
    # below scales to 2e-13 (measured <= 9e-15). This is the check a wiring error fails: with random weights
    # attention is nearly uniform, and a transposed V1 bias table in block 1 moves the logits by only 5e-5 of their
    # scale, swapped q and k by 1e-5, both inside float32's rounding of this model.
    assert (ours_exact - exact).abs().max() <= 1e-12 * exact.abs().max()
    # In float32 rounding alone parts them: the longest sums are the 3x3 convs over 4 x 32 channels (n = 1152
    # terms), which float32 rounds by about sqrt(n) u = 2e-6 of their scale (u = 2^-24, errors of either sign) and
    # at worst by n u = 7e-5; ~20 such sublayers deep, 1e-4 of the scale holds whatever kernels a CPU picks
    # (measured <= 3e-6 on an AMD EPYC, vectorised kernels or not)
    assert (logits - out.logits).abs().max() <= 1e-4 * out.logits.abs().max()
    assert (aux - ref_aux).abs().max() <= 1e-4 * ref_aux.abs().max()


@pytest.mark.parametrize("version", [1, 2])
def test_export_to_transformers_loads_with_from_pretrained(tmp_path, version):
    transformers = pytest.importorskip("transformers")
    model = seg_model(backbone=backbone_cfg(version=version), out_norms=version == 1)
    write_segmentation_checkpoint(model.state_dict(), model.cfg, tmp_path / "hf", "hf")
    hf = transformers.UperNetForSemanticSegmentation.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(1, 3, *PADDED)
    with torch.no_grad():
        ref = model(x)
        assert (hf(pixel_values=x).logits - ref).abs().max() <= 1e-4 * ref.abs().max()  # as test_transformers_upernet_parity
    back = swinkit.load_model(tmp_path / "hf")  # the directory: config.json + model.safetensors
    assert_same_state(back.state_dict(), model.state_dict())


def test_transformers_4_layout_loads():
    """Hub files written by transformers 4 (e.g. openmmlab/upernet-swin-tiny): no "swin." level, query/key/value."""
    hf = hf_upernet()
    renames = [("backbone.swin.", "backbone."), ("attention.q_proj", "attention.self.query"),
               ("attention.k_proj", "attention.self.key"), ("attention.v_proj", "attention.self.value"),
               ("attention.o_proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
               ("mlp.fc2", "output.dense"),
               ("attention.relative_position_bias.relative", "attention.self.relative")]
    v4 = {}
    for k, v in hf.state_dict().items():
        if "swin.layernorm" not in k:
            for a, b in renames:
                k = k.replace(a, b)
            v4[k] = v
    assert detect_segmentation_format(v4) == "hf"
    from_v5 = convert_segmentation_state_dict(hf.state_dict())
    assert_same_state(convert_segmentation_state_dict(v4), from_v5)


# ----------------------------------------------------------------------------------------------------------
# formats and round trips


@pytest.mark.parametrize("head", ["upernet", "fpn"])
@pytest.mark.parametrize("fmt", ["official", "mmseg", "hf"])
def test_state_dict_round_trips(fmt, head):
    model = seg_model(head)
    sd = model.state_dict()
    if fmt == "hf" and head == "fpn":
        with pytest.raises(ValueError, match="transformers' UperNetForSemanticSegmentation has a UPerNet head"):
            segmentation_from_swinkit(sd, fmt, model.cfg)
        return
    theirs = segmentation_from_swinkit(sd, fmt, model.cfg)
    assert detect_segmentation_format(theirs) == fmt
    assert_same_state(convert_segmentation_state_dict(theirs), sd)  # config inferred, exact tensors


@pytest.mark.parametrize("fmt,suffix", [("swinkit", ".safetensors"), ("official", ".pth"), ("mmseg", ".pth"),
                                        ("hf", "")])
def test_file_round_trips_keep_weights_and_config(tmp_path, fmt, suffix):
    model = seg_model(backbone=backbone_cfg(drop_path_rate=0.2), frozen_stages=1, aux_loss_weight=0.3)
    path = write_segmentation_checkpoint(model.state_dict(), model.cfg, tmp_path / f"m{suffix}", fmt, list("abcde"))
    back = swinkit.load_model(path)
    assert_same_state(back.state_dict(), model.state_dict())
    x = torch.randn(1, 3, 70, 90)
    assert torch.equal(run(back, x), run(model, x)) and back.class_names == list("abcde")
    if fmt == "swinkit":  # the config beside the weights: exactly the model's
        assert back.cfg == model.cfg
    else:  # what the weights tell, the rest defaults
        assert back.cfg.backbone.depths == model.cfg.backbone.depths and back.cfg.channels == 32


def test_save_model_round_trip(tmp_path):
    model = seg_model("fpn", aux_head=False)
    swinkit.save_model(model, tmp_path / "fpn.safetensors")
    back = swinkit.load_model(tmp_path / "fpn.safetensors")
    assert back.cfg == model.cfg and back.auxiliary_head is None
    assert_same_state(back.state_dict(), model.state_dict())


def test_mmseg_keys_and_unfold_patch_merging():
    """mmseg's own Swin (backbone.stages.*) concatenates merged neighbours in nn.Unfold order; its heads are
    ConvModules (conv + bn) with a conv_seg classifier; the official repo keeps the official backbone layout."""
    model = seg_model()
    mm = segmentation_from_swinkit(model.state_dict(), "mmseg", model.cfg)
    for k in ("backbone.stages.0.blocks.1.attn.w_msa.qkv.weight", "backbone.stages.2.downsample.reduction.weight",
              "backbone.norm3.weight", "decode_head.psp_modules.3.1.conv.weight",
              "decode_head.psp_modules.0.1.bn.running_var", "decode_head.bottleneck.bn.weight",
              "decode_head.lateral_convs.2.conv.weight", "decode_head.fpn_bottleneck.conv.weight",
              "decode_head.conv_seg.bias", "auxiliary_head.convs.0.bn.num_batches_tracked",
              "auxiliary_head.conv_seg.weight"):
        assert k in mm, k
    off = segmentation_from_swinkit(model.state_dict(), "official", model.cfg)
    assert "backbone.layers.0.downsample.reduction.weight" in off and "backbone.layers.0.blocks.1.attn_mask" not in off
    merge = model.backbone.layers[1].downsample
    x = torch.randn(2, 8, 8, 16)
    cols = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)  # (B, 16, 4C), (c, dy, dx)
    w, nw, nb = (mm[f"backbone.stages.0.downsample.{n}"] for n in ("reduction.weight", "norm.weight", "norm.bias"))
    ref = F.linear(F.layer_norm(cols, (64,), nw, nb), w).view(2, 4, 4, 32)
    with torch.no_grad():
        assert (merge(x) - ref).abs().max() <= 1e-5


def test_mmseg_semantic_fpn_keys():
    """mmseg's semantic FPN: mmdet's FPN neck (ConvModules without norm) and scale heads whose ConvModules
    alternate with Upsample modules."""
    model = seg_model("fpn")
    mm = segmentation_from_swinkit(model.state_dict(), "mmseg", model.cfg)
    heads = sorted(k for k in mm if re.match(r"decode_head\.scale_heads\.\d+\.\d+\.conv\.weight", k))
    assert heads == [f"decode_head.scale_heads.{i}.{k}.conv.weight" for i, k in
                     ((0, 0), (1, 0), (2, 0), (2, 2), (3, 0), (3, 2), (3, 4))]
    assert "neck.lateral_convs.3.conv.bias" in mm and "neck.fpn_convs.0.conv.weight" in mm


@pytest.mark.skipif(not FIXTURES.exists(), reason="needs ../shared/fixtures")
def test_official_backbone_keys_match_the_official_code():
    """The official segmentation backbone is the official classifier's trunk (fixture written by the official
    code) plus norm0..norm3; it keeps relative_position_index buffers and computes attention masks per input."""
    official = torch.load(FIXTURES / "official_v1_tiny.pth", weights_only=True)["model"]
    cfg = SwinConfig(embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=4, window_mode="pad")
    model = SegmentationModel(SegmentationConfig(backbone=cfg, num_classes=3, channels=16, aux_channels=8))
    ours = segmentation_from_swinkit(model.state_dict(), "official", model.cfg)
    trunk = {k: v.shape for k, v in official.items() if not k.startswith(("head.", "norm.")) and "attn_mask" not in k}
    backbone = {k[len("backbone."):]: v.shape for k, v in ours.items()
                if k.startswith("backbone.") and not re.match(r"backbone\.norm\d", k)}
    assert backbone == trunk
    assert {k for k in ours if re.match(r"backbone\.norm\d", k)} == {f"backbone.norm{i}.{p}" for i in range(3)
                                                                     for p in ("weight", "bias")}


def test_loading_with_a_new_class_count_reinitialises_the_classifiers(tmp_path):
    model = seg_model()
    swinkit.save_model(model, tmp_path / "m.safetensors")
    with pytest.warns(UserWarning, match="has 5 classes, the model 3: the classifiers are freshly initialised"):
        back = swinkit.load_model(tmp_path / "m.safetensors", num_classes=3, aux_head=False)
    assert back.decode_head.classifier.weight.shape[0] == 3 and back.auxiliary_head is None
    same = {k: v for k, v in model.state_dict().items() if not k.startswith(("auxiliary_head.", "decode_head.cl"))}
    assert all(torch.equal(back.state_dict()[k], v) for k, v in same.items())


def test_unknown_keys_are_an_error(tmp_path):
    sd = segmentation_from_swinkit(seg_model().state_dict(), "mmseg", seg_model().cfg)
    sd["decode_head.conv_cat.conv.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd}, tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"1 keys of this mmseg segmentation checkpoint have no place in swinkit: "
                                         r"decode_head\.conv_cat\.conv\.weight"):
        swinkit.load_model(tmp_path / "m.pth")


def test_convert_command(tmp_path, capsys):
    from swinkit.cli import main

    model = seg_model()
    swinkit.save_model(model, tmp_path / "m.safetensors")
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "mm.pth"), "--to", "mmseg"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert_same_state(swinkit.load_model(tmp_path / "mm.pth").state_dict(), model.state_dict())
    assert main(["inspect", str(tmp_path / "mm.pth")]) == 0
    out = capsys.readouterr().out
    assert "format:   mmseg (upernet segmentation, Swin V1)" in out and "num_classes: 5" in out
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "t.pth"), "--to", "timm"]) == 2
    assert "segmentation models convert to swinkit, official, mmseg, hf; got 'timm'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# the backbone


def test_backbone_outputs_channels_norms_and_any_size():
    bb = SwinBackbone(backbone_cfg(), out_indices=(1, -1)).eval()
    assert bb.out_indices == (1, 3) and bb.out_channels == [32, 128]
    assert {n.split(".")[0] for n, _ in bb.named_parameters() if n.startswith("norm")} == {"norm1", "norm3"}
    assert not hasattr(bb, "head") and not hasattr(bb, "norm")
    for size in [(4, 4), (13, 29), (97, 64)]:
        maps = run(bb, torch.randn(2, 3, *size))
        h, w = -(-size[0] // 8), -(-size[1] // 8)
        assert maps[0].shape == (2, 32, h, w) and maps[1].shape == (2, 128, -(-h // 4), -(-w // 4))
        flat = maps[0].permute(0, 2, 3, 1)  # fresh LayerNorm per output: zero mean, unit variance over channels
        assert flat.mean(-1).abs().max() < 1e-5 and (flat.var(-1, unbiased=False) - 1).abs().max() < 5e-3


@pytest.mark.parametrize("frozen", [-1, 0, 1, 2, 4])
def test_frozen_stages_take_no_gradient_and_stay_in_eval(frozen):
    bb = SwinBackbone(backbone_cfg(drop_path_rate=0.5, pos_embed="absolute+relative"), frozen_stages=frozen)
    bb.train()
    expect = set()  # mmseg's frozen set, in swinkit's names
    if frozen >= 0:
        expect |= {n for n, _ in bb.named_parameters() if n.startswith(("patch_embed.", "absolute_pos_embed"))}
    for i in range(max(frozen, 0)):
        expect |= {n for n, _ in bb.named_parameters() if n.startswith((f"layers.{i}.", f"norm{i}."))}
        if i + 1 < 4:
            expect |= {n for n, _ in bb.named_parameters() if n.startswith(f"layers.{i + 1}.downsample.")}
    assert {n for n, p in bb.named_parameters() if not p.requires_grad} == expect
    x = torch.randn(2, 3, 64, 64)
    out = sum(m.sum() for m in bb(x))
    if frozen < 4:
        out.backward()
        assert all((p.grad is None) == (n in expect) for n, p in bb.named_parameters())
    else:  # the whole backbone is frozen
        assert not out.requires_grad
    # drop path is active in training only where not frozen: frozen stages give their eval output
    torch.manual_seed(1)
    train = bb(x)
    eval_ = run(bb.eval(), x)
    for i in range(4):
        assert torch.equal(train[i].detach(), eval_[i]) == (i < frozen), i


def test_gradient_checkpointing_gives_the_same_output_and_gradients():
    cfg = SegmentationConfig(backbone=backbone_cfg(), dropout=0.0, **HEADS)
    a, b = SegmentationModel(cfg), SegmentationModel(cfg)
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing()
    x = torch.randn(2, 3, 70, 45)
    outs = []
    for m in (a, b):
        m.train()
        logits, aux = m.forward_with_aux(x)
        (logits.square().mean() + aux.square().mean()).backward()
        outs.append((logits, {n: p.grad for n, p in m.named_parameters()}))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-6)
    assert all(torch.allclose(outs[0][1][n], g, atol=1e-6) for n, g in outs[1][1].items())


@pytest.mark.parametrize("size,same", [((128, 128), 3), ((96, 96), 2)])
def test_pad_and_clamp_differ_only_where_a_stage_map_needs_it(size, same):
    """window 4. 128 px: stage maps 32, 16, 8, 4 - the last equals the window: clamp drops its shift, pad keeps
    it. 96 px: 24, 12, 6, 3 - stage 2 needs padding: clamp masks the padded keys, pad attends them as zeros."""
    pad = randomize_(SwinBackbone(backbone_cfg(window_mode="pad")), std=0.2).eval()
    clamp = SwinBackbone(backbone_cfg(window_mode="clamp")).eval()
    clamp.load_state_dict(pad.state_dict())
    x = torch.randn(1, 3, *size)
    for i, (p, c) in enumerate(zip(run(pad, x), run(clamp, x))):
        assert torch.equal(p, c) == (i < same), i


def test_backbone_from_checkpoints(tmp_path):
    """A classifier's trunk goes into a segmentation backbone (its per-stage norms start fresh); a segmentation
    checkpoint gives its backbone with the norms."""
    cls = randomize_(swinkit.SwinTransformer(SwinConfig(**BACKBONE, num_classes=7)))
    swinkit.save_model(cls, tmp_path / "cls.safetensors")
    seg = swinkit.create_segmentation_model("upernet_swin_t", num_classes=3, backbone=backbone_cfg(),
                                            backbone_checkpoint=tmp_path / "cls.safetensors")
    trunk = {k: v for k, v in cls.state_dict().items() if not k.startswith(("head.", "norm."))}
    own = seg.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in trunk.items())
    assert torch.equal(own["norm3.weight"], torch.ones(128)) and seg.cfg.backbone.window_mode == "pad"
    bb = swinkit.create_backbone(tmp_path / "cls.safetensors", out_indices=(2, 3))
    assert bb.cfg.window_mode == "pad" and all(torch.equal(bb.state_dict()[k], v) for k, v in trunk.items())
    model = seg_model()
    swinkit.save_model(model, tmp_path / "seg.safetensors")
    bb = swinkit.create_backbone(tmp_path / "seg.safetensors", out_indices=(3,))
    x = torch.randn(1, 3, 64, 96)
    assert torch.equal(run(bb, x)[0], run(model.backbone, x)[3])


# ----------------------------------------------------------------------------------------------------------
# models, variants, errors


@pytest.mark.parametrize("head", ["upernet", "fpn"])
def test_models_give_logits_at_the_input_size(head):
    model = seg_model(head)
    for size in [(33, 47), (64, 64)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            logits, aux = model.forward_with_aux(x)
            assert logits.shape == aux.shape == (2, 5, *size) and torch.equal(model(x), logits)
    assert seg_model(head, aux_head=False).forward_with_aux(x)[1] is None
    nwd = model.no_weight_decay()
    assert "backbone.layers.0.blocks.0.attn.relative_position_bias_table" in nwd and "backbone.norm0.weight" in nwd
    assert nwd <= {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("name", ["upernet_swin_t", "upernet_swin_s", "upernet_swin_b"])
def test_published_params_and_flops(name):
    from swinkit.counting import measure_segmentation_variant

    r = measure_segmentation_variant(name)
    assert r["size"] == [512, 2048]
    assert abs(r["params_m"] / SEG_VARIANTS[name]["paper_params_m"] - 1) < 0.01  # measured 59.9 / 81.3 / 121.3
    assert abs(r["gmacs"] / SEG_VARIANTS[name]["paper_gmacs"] - 1) < 0.01  # measured 944.4 / 1037.4 / 1187.4


def test_errors():
    with pytest.raises(ValueError, match=r"out_indices must be distinct stage indices in \[0, 4\) \(or negative from "
                                         r"the end\), got \(0, 4\)"):
        SwinBackbone(backbone_cfg(), out_indices=(0, 4))
    with pytest.raises(ValueError, match=r"frozen_stages must be an int in \[-1, 4\]"):
        SwinBackbone(backbone_cfg(), frozen_stages=5)
    with pytest.raises(TypeError, match="SwinBackbone has no classifier"):
        SwinBackbone(backbone_cfg()).forward_features(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"head must be one of \('upernet', 'fpn'\), got 'deeplab'"):
        SegmentationConfig(backbone=backbone_cfg(), head="deeplab")
    with pytest.raises(ValueError, match=r"aux_in_index must be a backbone stage in \[0, 4\), got 4"):
        SegmentationConfig(backbone=backbone_cfg(), aux_in_index=4)
    with pytest.raises(ValueError, match="unknown segmentation model 'upernet_swin_x'"):
        swinkit.create_segmentation_model("upernet_swin_x")
    with pytest.raises(TypeError, match=r"unknown config fields \['chanels'\]"):
        swinkit.create_segmentation_model("upernet_swin_t", chanels=3)
    with pytest.raises(ValueError, match="'swin_q' is neither a variant name nor an existing checkpoint"):
        swinkit.create_backbone("swin_q")
    with pytest.raises(ValueError, match=r"expected a \(B, 3, H, W\) float tensor"):
        seg_model()(torch.zeros(3, 32, 32))
