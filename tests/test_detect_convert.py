"""mmdetection / official Swin-Transformer-Object-Detection checkpoints into swinkit's torchvision detectors, and
swinkit's own detection files. The mmdet checkpoints are built here by hand, key by key, as mmdet names them."""
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_
from swinkit import DetectionConfig, SwinConfig
from swinkit.config import SegmentationConfig
from swinkit.io.files import CheckpointError
from swinkit.io.formats.segmentation import load_backbone_weights, read_backbone, segmentation_from_swinkit
from swinkit.io.formats.detection import (convert_detection_state_dict, detection_to_swinkit, infer_detection_config,
                                  is_detection_state_dict, load_detector, read_detection_checkpoint, save_detector)
from swinkit.models.backbone import SwinBackbone
from swinkit.models.detection import build_detector
from swinkit.models.segmentation import SegmentationModel

EMBED, DEPTHS, HEADS, WIN = 32, (1, 1, 2, 1), (1, 2, 4, 8), 7
NECK = 64  # FPN width; not 256, the last stage's width, so that P6 "on_input" (from C5) is unambiguous
NC = 3  # object classes
TINY = dict(embed_dim=EMBED, depths=DEPTHS, num_heads=HEADS, window_size=WIN, drop_path_rate=0.0, min_size=64,
            max_size=96, fpn_channels=NECK)


def r(*shape):
    return torch.randn(*shape) * 0.1


# ----------------------------------------------------------------------------------------------------------
# mmdet checkpoints by hand


def mmdet_backbone(layout: str, out_indices) -> dict:
    """A tiny Swin in the official 2.x layout (backbone.layers.*, merging at the end of a stage) or mmdet 3.x's
    own (backbone.stages.*, attn.w_msa, ffn.layers, patch_embed.projection)."""
    off = layout == "official"
    sd = {f"backbone.patch_embed.{'proj' if off else 'projection'}.weight": r(EMBED, 3, 4, 4),
          f"backbone.patch_embed.{'proj' if off else 'projection'}.bias": r(EMBED),
          "backbone.patch_embed.norm.weight": 1 + r(EMBED), "backbone.patch_embed.norm.bias": r(EMBED)}
    for i, (depth, heads) in enumerate(zip(DEPTHS, HEADS)):
        c = EMBED * 2**i
        stage = f"backbone.{'layers' if off else 'stages'}.{i}."
        for j in range(depth):
            b = f"{stage}blocks.{j}."
            attn = b + ("attn." if off else "attn.w_msa.")
            fc1, fc2 = ("mlp.fc1.", "mlp.fc2.") if off else ("ffn.layers.0.0.", "ffn.layers.1.")
            sd.update({b + "norm1.weight": 1 + r(c), b + "norm1.bias": r(c),
                       attn + "relative_position_bias_table": r((2 * WIN - 1) ** 2, heads),
                       attn + "relative_position_index": torch.arange(WIN**4).view(WIN**2, WIN**2) % (2 * WIN - 1)**2,
                       attn + "qkv.weight": r(3 * c, c), attn + "qkv.bias": r(3 * c),
                       attn + "proj.weight": r(c, c), attn + "proj.bias": r(c),
                       b + "norm2.weight": 1 + r(c), b + "norm2.bias": r(c),
                       b + fc1 + "weight": r(4 * c, c), b + fc1 + "bias": r(4 * c),
                       b + fc2 + "weight": r(c, 4 * c), b + fc2 + "bias": r(c)})
        if i < len(DEPTHS) - 1:
            sd.update({stage + "downsample.reduction.weight": r(2 * c, 4 * c),
                       stage + "downsample.norm.weight": 1 + r(4 * c), stage + "downsample.norm.bias": r(4 * c)})
    for i in out_indices:
        c = EMBED * 2**i
        sd.update({f"backbone.norm{i}.weight": 1 + r(c), f"backbone.norm{i}.bias": r(c)})
    return sd


def mmdet_neck(out_indices, extra: bool) -> dict:
    """mmdet's FPN: lateral 1x1 and output 3x3 ConvModules; RetinaNet / FCOS add two stride-2 convs, the first on
    the last backbone stage (add_extra_convs="on_input")."""
    sd = {}
    for k, i in enumerate(out_indices):
        sd.update({f"neck.lateral_convs.{k}.conv.weight": r(NECK, EMBED * 2**i, 1, 1),
                   f"neck.lateral_convs.{k}.conv.bias": r(NECK),
                   f"neck.fpn_convs.{k}.conv.weight": r(NECK, NECK, 3, 3), f"neck.fpn_convs.{k}.conv.bias": r(NECK)})
    if extra:
        n = len(out_indices)
        sd.update({f"neck.fpn_convs.{n}.conv.weight": r(NECK, EMBED * 2**3, 3, 3), f"neck.fpn_convs.{n}.conv.bias":
                   r(NECK), f"neck.fpn_convs.{n + 1}.conv.weight": r(NECK, NECK, 3, 3),
                   f"neck.fpn_convs.{n + 1}.conv.bias": r(NECK)})
    return sd


def rcnn_heads(mask: bool, cascade: bool = False) -> dict:
    """mmdet's RPNHead, Shared2FCBBoxHead (fc_cls: num_classes + 1 rows, background last; fc_reg class-specific,
    Cascade's class-agnostic) and FCNMaskHead."""
    sd = {"rpn_head.rpn_conv.weight": r(NECK, NECK, 3, 3), "rpn_head.rpn_conv.bias": r(NECK),
          "rpn_head.rpn_cls.weight": r(3, NECK, 1, 1), "rpn_head.rpn_cls.bias": r(3),
          "rpn_head.rpn_reg.weight": r(12, NECK, 1, 1), "rpn_head.rpn_reg.bias": r(12)}
    for s in (".0", ".1", ".2") if cascade else ("",):
        bbox = f"roi_head.bbox_head{s}."
        sd.update({bbox + "shared_fcs.0.weight": r(1024, NECK * 7 * 7), bbox + "shared_fcs.0.bias": r(1024),
                   bbox + "shared_fcs.1.weight": r(1024, 1024), bbox + "shared_fcs.1.bias": r(1024),
                   bbox + "fc_cls.weight": r(NC + 1, 1024), bbox + "fc_cls.bias": r(NC + 1),
                   bbox + "fc_reg.weight": r(4 if cascade else 4 * NC, 1024), bbox + "fc_reg.bias": r(4 if cascade
                                                                                                     else 4 * NC)})
        if mask:
            m = f"roi_head.mask_head{s}."
            for k in range(4):
                sd.update({m + f"convs.{k}.conv.weight": r(NECK, NECK, 3, 3), m + f"convs.{k}.conv.bias": r(NECK)})
            sd.update({m + "upsample.weight": r(NECK, NECK, 2, 2), m + "upsample.bias": r(NECK),
                       m + "conv_logits.weight": r(NC, NECK, 1, 1), m + "conv_logits.bias": r(NC)})
    return sd


def dense_heads(kind: str) -> dict:
    """mmdet's RetinaHead (9 anchors, sigmoid: 9 * num_classes outputs) or FCOSHead (num_classes, GroupNorm)."""
    sd = {}
    for branch in ("cls_convs", "reg_convs"):
        for k in range(4):
            sd.update({f"bbox_head.{branch}.{k}.conv.weight": r(NECK, NECK, 3, 3)})
            if kind == "fcos":
                sd.update({f"bbox_head.{branch}.{k}.gn.weight": r(NECK), f"bbox_head.{branch}.{k}.gn.bias": r(NECK)})
            else:
                sd[f"bbox_head.{branch}.{k}.conv.bias"] = r(NECK)
    if kind == "retinanet":
        sd.update({"bbox_head.retina_cls.weight": r(9 * NC, NECK, 3, 3), "bbox_head.retina_cls.bias": r(9 * NC),
                   "bbox_head.retina_reg.weight": r(36, NECK, 3, 3), "bbox_head.retina_reg.bias": r(36)})
    else:
        sd.update({"bbox_head.conv_cls.weight": r(NC, NECK, 3, 3), "bbox_head.conv_cls.bias": r(NC),
                   "bbox_head.conv_reg.weight": r(4, NECK, 3, 3), "bbox_head.conv_reg.bias": r(4),
                   "bbox_head.conv_centerness.weight": r(1, NECK, 3, 3), "bbox_head.conv_centerness.bias": r(1),
                   **{f"bbox_head.scales.{k}.scale": torch.tensor(1.0) for k in range(5)}})
    return sd


OUT = {"maskrcnn": (0, 1, 2, 3), "fasterrcnn": (0, 1, 2, 3), "cascade": (0, 1, 2, 3), "cascade_mask": (0, 1, 2, 3),
       "retinanet": (1, 2, 3), "fcos": (1, 2, 3)}


def mmdet_checkpoint(kind: str, layout: str = "mmdet") -> dict:
    out = OUT[kind]
    sd = {**mmdet_backbone(layout, out), **mmdet_neck(out, extra=kind in ("retinanet", "fcos"))}
    if kind in ("retinanet", "fcos"):
        sd.update(dense_heads(kind))
    else:
        sd.update(rcnn_heads(mask=kind in ("maskrcnn", "cascade_mask"), cascade=kind.startswith("cascade")))
    return sd


def expected_name(key: str, layout: str, n: int) -> str | None:
    """Where a hand-built mmdet backbone / neck tensor must land among torchvision's detector names (None: a buffer
    swinkit recomputes). The patch merging of mmdet 3.x is reordered, so it is checked by its output instead."""
    if key.endswith("relative_position_index"):
        return None
    if m := re.fullmatch(r"neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)", key):
        return f"backbone.fpn.inner_blocks.{m[1]}.0.{m[2]}"
    if m := re.fullmatch(r"neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)", key):
        k = int(m[1])
        return f"backbone.fpn.layer_blocks.{k}.0.{m[2]}" if k < n else f"backbone.fpn.extra_blocks.p{k - n + 6}.{m[2]}"
    if m := re.fullmatch(r"backbone\.(layers|stages)\.(\d+)\.downsample\.(.*)", key):  # merging opens stage i + 1
        return f"backbone.body.layers.{int(m[2]) + 1}.downsample.{m[3]}"
    key = key.replace("backbone.", "backbone.body.", 1)
    for theirs, ours in (("patch_embed.projection.", "patch_embed.proj."), ("stages.", "layers."),
                         ("attn.w_msa.", "attn."), ("ffn.layers.0.0.", "mlp.fc1."), ("ffn.layers.1.", "mlp.fc2.")):
        key = key.replace(theirs, ours)
    return key


def save(tmp_path, sd: dict, name="det.pth", **extra):
    path = tmp_path / name
    torch.save({"state_dict": sd, **extra}, path)
    return path


def load_quiet(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_detector(path, **kw)


def reference_backbone(tmp_path, sd: dict, layout: str, out_indices) -> SwinBackbone:
    """The same backbone tensors read through the existing segmentation path (read_backbone of an official / mmseg
    UPerNet file holding them)."""
    cfg = SwinConfig(embed_dim=EMBED, depths=DEPTHS, num_heads=HEADS, window_size=WIN, window_mode="pad")
    seg = SegmentationModel(SegmentationConfig(backbone=cfg, num_classes=3, channels=16, aux_head=False))
    fmt = "official" if layout == "official" else "mmseg"
    seg_sd = {k: v for k, v in segmentation_from_swinkit(seg.state_dict(), fmt, seg.cfg).items()
              if not k.startswith("backbone.")}
    seg_sd.update({k: v for k, v in sd.items() if k.startswith("backbone.")})
    path = save(tmp_path, seg_sd, "seg.pth")
    bb_cfg, bb_sd = read_backbone(path)
    ref = SwinBackbone(bb_cfg, out_indices)
    load_backbone_weights(ref, bb_sd, str(path))
    return ref.eval()


def reference_fpn(feats: list, t: dict, extra: str) -> list:
    """mmdet's FPN from the raw tensors `t`: lateral 1x1 convs, nearest top-down sums, 3x3 output convs, then a
    stride-2 max pool of the last output (Mask / Faster R-CNN) or two stride-2 convs from the last backbone map,
    the second after a ReLU (torchvision's LastLevelP6P7)."""
    n = len(feats)
    conv = lambda x, name, **kw: F.conv2d(x, t[f"neck.{name}.conv.weight"], t[f"neck.{name}.conv.bias"], **kw)  # noqa
    lat = [conv(f, f"lateral_convs.{k}") for k, f in enumerate(feats)]
    for k in range(n - 1, 0, -1):
        lat[k - 1] = lat[k - 1] + F.interpolate(lat[k], size=lat[k - 1].shape[-2:], mode="nearest")
    outs = [conv(x, f"fpn_convs.{k}", padding=1) for k, x in enumerate(lat)]
    if extra == "pool":
        return outs + [F.max_pool2d(outs[-1], 1, stride=2)]
    p6 = conv(feats[-1], f"fpn_convs.{n}", stride=2, padding=1)
    return outs + [p6, conv(F.relu(p6), f"fpn_convs.{n + 1}", stride=2, padding=1)]


# ----------------------------------------------------------------------------------------------------------
# mmdet / official into swinkit


@pytest.mark.parametrize("layout", ["official", "mmdet"])
@pytest.mark.parametrize("kind", ["maskrcnn", "retinanet"])
def test_mmdet_checkpoint_loads_backbone_and_neck_exactly(tmp_path, layout, kind):
    """Every backbone / neck tensor lands on its torchvision name unchanged (mmdet 3.x's merging: by its nn.Unfold
    output), the backbone computes what the segmentation path's backbone of the same tensors computes, and the
    FPN levels equal mmdet's FPN computed from the raw tensors."""
    raw = mmdet_checkpoint(kind, layout)
    path = save(tmp_path, raw)
    model = load_quiet(path)
    assert model.cfg.detector == kind and model.cfg.fpn_channels == NECK
    own = model.state_dict()
    n = len(OUT[kind])
    merging = []
    for k, v in raw.items():
        if k.startswith(("rpn_head.", "roi_head.", "bbox_head.")):
            continue
        name = expected_name(k, layout, n)
        if name is None:
            continue
        if layout == "mmdet" and ".downsample." in k:
            merging.append(k)
            assert own[name].shape == v.shape, k
        else:
            assert torch.equal(own[name], v), k
    assert len(merging) == (9 if layout == "mmdet" else 0)
    body = model.backbone.body
    with torch.no_grad():
        for i in range(1, 4):  # mmcv's PatchMerging: LayerNorm + Linear over nn.Unfold's (c, dy, dx) columns
            c = EMBED * 2 ** (i - 1)
            x = torch.randn(2, 6, 10, c)
            stage = f"backbone.{'layers' if layout == 'official' else 'stages'}.{i - 1}.downsample."
            cols = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)  # (B, 15, 4c)
            if layout == "official":  # the official concat order: (dy, dx) = 00, 10, 01, 11, then c
                cols = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
                cols = cols.reshape(2, 15, 4 * c)
            ref = F.linear(F.layer_norm(cols, (4 * c,), raw[stage + "norm.weight"], raw[stage + "norm.bias"]),
                           raw[stage + "reduction.weight"]).view(2, 3, 5, 2 * c)
            assert (body.layers[i].downsample(x) - ref).abs().max() <= 1e-5

        ref_body = reference_backbone(tmp_path, raw, layout, OUT[kind])
        x = torch.randn(1, 3, 96, 128)
        feats = body(x)
        for a, b in zip(feats, ref_body(x)):
            assert torch.allclose(a, b, atol=1e-6, rtol=0)
        fpn = list(model.backbone(x).values())
        expect = reference_fpn(feats, raw, "pool" if kind == "maskrcnn" else "p6p7")
        assert len(fpn) == len(expect) == 5
        for a, b in zip(fpn, expect):
            assert a.shape == b.shape and (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("kind,groups", [
    ("maskrcnn", "roi_head.bbox_head, roi_head.mask_head, rpn_head"),
    ("fasterrcnn", "roi_head.bbox_head, rpn_head"),
    ("cascade_mask", "roi_head.bbox_head.0, roi_head.bbox_head.1, roi_head.bbox_head.2, roi_head.mask_head.0, "
                     "roi_head.mask_head.1, roi_head.mask_head.2, rpn_head"),
    ("retinanet", "bbox_head"), ("fcos", "bbox_head")])
def test_one_warning_lists_the_dropped_head_groups(tmp_path, kind, groups):
    raw = mmdet_checkpoint(kind)
    heads = [k for k in raw if k.startswith(("rpn_head.", "roi_head.", "bbox_head."))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_detector(save(tmp_path, raw))
    assert len(caught) == 1, [str(w.message) for w in caught]
    msg = str(caught[0].message)
    assert f"dropped {len(heads)} mmdet head tensors ({groups})" in msg
    assert "heads start from their initialisation" in msg
    assert ("Cascade R-CNN" in msg) == kind.startswith("cascade")
    assert ("P7 is computed from ReLU(P6)" in msg) == (kind in ("retinanet", "fcos"))
    assert isinstance(model, torch.nn.Module) and not model.training


@pytest.mark.parametrize("kind,detector", [("maskrcnn", "maskrcnn"), ("fasterrcnn", "fasterrcnn"),
                                           ("cascade", "fasterrcnn"), ("cascade_mask", "maskrcnn"),
                                           ("retinanet", "retinanet"), ("fcos", "fcos")])
def test_detector_and_classes_are_inferred(kind, detector):
    """fc_cls: num_classes + 1 rows; retina_cls: 9 * num_classes; FCOS's conv_cls: num_classes; out_indices from
    the lateral convs; the backbone from its tensors."""
    cfg, guessed = infer_detection_config(mmdet_checkpoint(kind))
    assert (cfg.detector, cfg.num_classes, cfg.fpn_channels) == (detector, NC, NECK)
    assert cfg.out_indices == OUT[kind]
    bb = cfg.backbone
    assert (bb.embed_dim, bb.depths, bb.num_heads, bb.window_size[0], bb.window_mode) == \
        (EMBED, DEPTHS, HEADS, (WIN, WIN), "pad")
    model = build_detector(cfg)
    if detector in ("maskrcnn", "fasterrcnn"):
        assert model.roi_heads.box_predictor.cls_score.out_features == NC + 1
    else:  # sigmoid heads, as mmdet's: one output per class
        assert model.head.classification_head.num_classes == NC


def test_class_names_from_mmdet_meta(tmp_path):
    names = ["cat", "dog", "bird"]
    for meta in ({"CLASSES": tuple(names)}, {"dataset_meta": {"classes": tuple(names)}}):  # mmdet 2.x, 3.x
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg, _, back, fmt = read_detection_checkpoint(save(tmp_path, mmdet_checkpoint("maskrcnn"), meta=meta))
        assert back == names and fmt == "mmdet" and cfg.num_classes == 3
    model = load_quiet(save(tmp_path, mmdet_checkpoint("fcos", "official"), meta={"CLASSES": names}))
    assert model.class_names == names and model.cfg.detector == "fcos"


def test_retinanet_and_fcos_necks_map_onto_inner_layer_and_extra_blocks():
    for kind in ("retinanet", "fcos"):
        raw = mmdet_checkpoint(kind)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fmt, ours, dropped = detection_to_swinkit(raw)
        neck = {k for k in ours if k.startswith("backbone.fpn.")}
        assert neck == {f"backbone.fpn.{m}.{p}" for p in ("weight", "bias") for m in
                        [f"inner_blocks.{k}.0" for k in range(3)] + [f"layer_blocks.{k}.0" for k in range(3)]
                        + ["extra_blocks.p6", "extra_blocks.p7"]}
        assert torch.equal(ours["backbone.fpn.extra_blocks.p6.weight"], raw["neck.fpn_convs.3.conv.weight"])
        assert torch.equal(ours["backbone.fpn.extra_blocks.p7.bias"], raw["neck.fpn_convs.4.conv.bias"])
        assert ours["backbone.fpn.extra_blocks.p6.weight"].shape[1] == EMBED * 8  # on the last stage (C5)
        assert set(dropped) == {k for k in raw if k.startswith("bbox_head.")}
        assert not any(k.startswith("backbone.body.norm0") for k in ours)  # stages 1-3 only


# ----------------------------------------------------------------------------------------------------------
# round trips


def tiny_detector(detector: str, **kw):
    cfg = DetectionConfig.from_name(f"{detector}_swin_t", num_classes=NC, **{**TINY, **kw})
    return randomize_(build_detector(cfg), 0.05).eval()


@pytest.mark.parametrize("detector", ["maskrcnn", "retinanet"])
@pytest.mark.parametrize("dst", ["mmdet", "official"])
def test_swinkit_to_mmdet_and_back_keeps_backbone_and_neck(detector, dst):
    model = tiny_detector(detector)
    sd = model.state_dict()
    theirs = convert_detection_state_dict(sd, dst, model.cfg)
    stage = "stages" if dst == "mmdet" else "layers"
    n = len(model.cfg.out_indices)
    for k in (f"backbone.{stage}.0.downsample.reduction.weight", f"neck.lateral_convs.{n - 1}.conv.weight",
              f"neck.fpn_convs.{n - 1}.conv.bias", f"backbone.norm{model.cfg.out_indices[0]}.weight",
              f"backbone.{stage}.2.blocks.1." + ("attn.w_msa." if dst == "mmdet" else "attn.") +
              "relative_position_index"):
        assert k in theirs, k
    assert (f"neck.fpn_convs.{n + 1}.conv.weight" in theirs) == (detector == "retinanet")
    assert not any(k.startswith(("rpn", "roi_head", "bbox_head", "head.")) for k in theirs)  # heads not exported
    fmt, back, dropped = detection_to_swinkit(theirs)
    assert fmt == dst and dropped == []
    keep = {k: v for k, v in sd.items() if k.startswith(("backbone.body.", "backbone.fpn."))}
    assert set(back) == set(keep)
    assert all(torch.equal(back[k], v) for k, v in keep.items())


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("detector", ["maskrcnn", "fcos"])
def test_save_and_load_detector_round_trip(tmp_path, suffix, detector):
    model = tiny_detector(detector, score_thresh=0.0, frozen_stages=1)
    path = save_detector(model, tmp_path / f"det{suffix}", class_names=["a", "b", "c"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # swinkit's own files load silently
        back = load_detector(path)
    assert back.cfg == model.cfg and back.class_names == ["a", "b", "c"] and not back.training
    a, b = model.state_dict(), back.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    images = [torch.rand(3, 70, 90)]
    with torch.no_grad():
        out_a, out_b = model(images), back(images)
    assert len(out_a[0]["boxes"]) > 0  # score_thresh 0: the comparison covers real detections
    for k in out_a[0]:
        assert torch.equal(out_a[0][k], out_b[0][k]), k
    cfg, _, names, fmt = read_detection_checkpoint(path)
    assert fmt == "swinkit" and cfg == model.cfg and names == ["a", "b", "c"]


def test_torchvision_layout_state_dict_passes_through_with_config_inferred(tmp_path):
    model = tiny_detector("retinanet")
    sd = model.state_dict()
    assert is_detection_state_dict(sd)
    fmt, back, dropped = detection_to_swinkit(sd)
    assert fmt == "swinkit" and dropped == [] and back.keys() == sd.keys()
    torch.save(sd, tmp_path / "tv.pth")  # a bare state dict: no config recorded
    loaded = load_detector(tmp_path / "tv.pth")
    assert (loaded.cfg.detector, loaded.cfg.num_classes, loaded.cfg.fpn_channels) == ("retinanet", NC, NECK)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())


def test_num_classes_override_restarts_class_dependent_heads(tmp_path):
    model = tiny_detector("fasterrcnn")
    path = save_detector(model, tmp_path / "d.safetensors")
    with pytest.warns(UserWarning, match=r"has 3 classes, the model 5: 4 class-dependent head tensors"):
        back = load_detector(path, num_classes=5)
    assert back.roi_heads.box_predictor.cls_score.out_features == 6  # cls_score and bbox_pred restart
    assert torch.equal(back.roi_heads.box_head.fc6.weight, model.roi_heads.box_head.fc6.weight)


# ----------------------------------------------------------------------------------------------------------
# errors


def test_a_classifier_checkpoint_is_no_detection_checkpoint(tmp_path):
    from swinkit import create_model, save_model

    save_model(create_model("swin_t", embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), num_classes=4),
               tmp_path / "cls.safetensors")
    with pytest.raises(CheckpointError, match=r"cls\.safetensors is not a detection checkpoint: expected mmdet's "
                                              r"neck\.\* with rpn_head\.\* / roi_head\.\* / bbox_head\.\*"):
        load_detector(tmp_path / "cls.safetensors")


def test_unknown_keys_are_listed(tmp_path):
    raw = mmdet_checkpoint("maskrcnn")
    raw["neck.lateral_convs.0.bn.weight"] = torch.ones(NECK)  # a normed neck swinkit's FPN does not have
    raw["backbone.stages.0.blocks.0.gamma"] = torch.ones(EMBED)
    with pytest.raises(CheckpointError, match=r"2 keys of this mmdet detection checkpoint have no place in swinkit: "
                                              r"backbone\.stages\.0\.blocks\.0\.gamma, "
                                              r"neck\.lateral_convs\.0\.bn\.weight"):
        load_quiet(save(tmp_path, raw))


def test_a_neck_swinkit_cannot_build_is_an_error():
    raw = mmdet_checkpoint("retinanet")
    raw["neck.fpn_convs.3.conv.weight"] = r(NECK, NECK, 3, 3)  # add_extra_convs="on_output": P6 from P5
    with pytest.raises(ValueError, match=r"P6 / P7 from the last backbone stage \(256 channels.*an extra conv on 64"):
        infer_detection_config(raw)
    raw = {k: v for k, v in mmdet_checkpoint("maskrcnn").items() if not k.startswith("neck.lateral_convs.3")}
    with pytest.raises(ValueError, match=r"a maskrcnn takes 4 backbone stages"):
        infer_detection_config(raw)
