"""swinkit's Swin as a transformers backbone (swinkit.interop.hf): equal to transformers' own SwinBackbone and
Swinv2Backbone on the same random weights at sizes that pad, out_features / out_indices / channels as transformers
defines them, save_pretrained / from_pretrained, the transformers heads that take a backbone_config, and any swinkit
checkpoint or mixer inside them."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import swinkit  # noqa: E402
from swinkit.interop.hf import SwinkitBackbone, SwinkitBackboneConfig, backbone_config  # noqa: E402
from swinkit.io.files import CheckpointError  # noqa: E402
from swinkit.io.formats.hfbackbone import (export_hf_backbone, hf_backbone_from_checkpoint,  # noqa: E402
                                           import_hf_backbone)

from conftest import randomize_  # noqa: E402
from test_convert import PARITY, PARITY_FLOAT64, parity_error  # noqa: E402

SMALL = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=4)
STAGES = ["stage1", "stage2", "stage3", "stage4"]
# 75 x 101: patch padding, then stage maps 19x26, 10x13, 5x7, 3x4, none a window multiple, the last smaller than
# the window (padded to one window, keys masked in swinkit, zeros attended in transformers' pad behaviour)
PADS = (75, 101)


def hf_pair(version: int, out_features=STAGES, image_size: int = 64):
    """transformers' Swin(v2)Backbone with random weights, and swinkit's SwinkitBackbone holding them. At
    image_size 64 the last stage maps of Swinv2 (4, 2) are no larger than the window: it fixes those stages'
    windows (4, 2) unshifted when built, which the conversion must reproduce."""
    cls, model = ((transformers.SwinConfig, transformers.SwinBackbone) if version == 1 else
                  (transformers.Swinv2Config, transformers.Swinv2Backbone))
    c = cls(image_size=image_size, out_features=list(out_features), **SMALL)
    theirs = randomize_(model(c), std=0.2).eval()
    bb = import_hf_backbone(theirs.state_dict(), c.to_dict(), "test")
    ours = SwinkitBackbone(SwinkitBackboneConfig(**{k: v for k, v in bb.backbone_config().items()
                                                    if k != "model_type"})).eval()
    ours.load_state_dict(bb.state_dict, strict=True)
    return theirs, ours, bb


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("size", [(64, 64), PADS], ids=["window-multiple", "padded"])
def test_feature_maps_equal_transformers(version, size):
    feats = ["stem", *STAGES] if version == 1 else STAGES
    theirs, ours, _ = hf_pair(version, feats)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        a, b = theirs(x).feature_maps, ours(x).feature_maps
        a64 = copy.deepcopy(theirs).double()(x.double()).feature_maps
        b64 = copy.deepcopy(ours).double()(x.double()).feature_maps
    assert ours.channels == theirs.channels and ours.out_features == theirs.out_features
    assert [m.shape for m in a] == [m.shape for m in b]
    assert all(m.std() > 0.1 for m in a)  # not a degenerate comparison
    # the maps are LayerNorm outputs (V1) or stage outputs of scale ~1: PARITY (test_convert) as a share of the
    # scale; in float64 the two are the same function (see PARITY_FLOAT64)
    assert max(parity_error(q, p) for p, q in zip(a, b)) <= PARITY
    assert max(parity_error(q, p) for p, q in zip(a64, b64)) <= PARITY_FLOAT64


def test_a_wrong_key_fails_parity_or_loading():
    """The checks above are tight enough to see a swapped tensor; an unknown key is an error naming it."""
    theirs, ours, bb = hf_pair(1)
    sd = dict(bb.state_dict)
    q = "swin.layers.1.blocks.0.attn.qkv.weight"
    sd[q] = torch.cat([sd[q][16:32], sd[q][:16], sd[q][32:]])  # q and k swapped
    ours.load_state_dict(sd)
    x = torch.randn(1, 3, *PADS, dtype=torch.float64)
    with torch.no_grad():
        err = parity_error(copy.deepcopy(ours).double()(x).feature_maps[-1],
                           copy.deepcopy(theirs).double()(x).feature_maps[-1])
    assert err > 1e3 * PARITY_FLOAT64
    bad = dict(theirs.state_dict())
    bad["swin.encoder.layers.0.blocks.0.attention.q_projx.weight"] = bad.pop(
        "swin.encoder.layers.0.blocks.0.attention.q_proj.weight")
    with pytest.raises(CheckpointError, match="q_projx"):
        import_hf_backbone(bad, theirs.config.to_dict(), "test")


@pytest.mark.parametrize("version", [1, 2])
def test_export_to_transformers_round_trips(version):
    theirs, _, bb = hf_pair(version)
    config, sd = export_hf_backbone(bb)
    cls = transformers.SwinConfig if version == 1 else transformers.Swinv2Config
    back = (transformers.SwinBackbone if version == 1 else transformers.Swinv2Backbone)(cls.from_dict(config)).eval()
    back.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, *PADS)
    with torch.no_grad():
        assert all(torch.equal(p, q) for p, q in zip(theirs(x).feature_maps, back(x).feature_maps))


def test_out_features_and_indices_follow_transformers():
    c = backbone_config("swin_t", out_indices=[2, 4])
    assert c.out_features == ["stage2", "stage4"] and c.stage_names == ["stem", *STAGES]
    m = SwinkitBackbone(backbone_config(dict(SMALL), out_features=["stem", "stage2", "stage4"]))
    assert m.channels == [16, 32, 128] and m.out_indices == [0, 2, 4]
    out = m(torch.randn(1, 3, 64, 64), output_hidden_states=True)
    assert [f.shape[-1] for f in out.feature_maps] == [16, 8, 2]  # strides 4, 8, 32
    assert [h.shape[1] for h in out.hidden_states] == [16, 16, 32, 64, 128]
    assert backbone_config("swin_t").out_features == STAGES  # the dense heads' default
    with pytest.raises(ValueError, match="stage_names"):
        backbone_config("swin_t", out_features=["stage5"])
    with pytest.raises(ValueError, match="no stage"):
        SwinkitBackbone(backbone_config(dict(SMALL), out_features=["stem"]))
    with pytest.raises(ValueError, match="unknown Swin variant"):
        SwinkitBackboneConfig(swin="swin_q")
    with pytest.raises(ValueError, match="attention maps"):
        m(torch.randn(1, 3, 32, 32), output_attentions=True)


def test_auto_classes_and_save_pretrained_round_trip(tmp_path):
    c = backbone_config(dict(SMALL, version=2, mixer=["shifted_window", "shifted_window", "global", "global"]))
    m = randomize_(transformers.AutoBackbone.from_config(c)).eval()
    assert isinstance(m, SwinkitBackbone)
    m.save_pretrained(tmp_path)
    assert isinstance(transformers.AutoConfig.from_pretrained(str(tmp_path)), SwinkitBackboneConfig)
    # (AutoBackbone.from_pretrained of transformers 5 asks the Hub whether a local path is a repository)
    back = SwinkitBackbone.from_pretrained(str(tmp_path)).eval()
    assert back.config.swin == m.config.swin and back.out_features == m.out_features
    x = torch.randn(1, 3, *PADS)
    with torch.no_grad():
        assert all(torch.equal(p, q) for p, q in zip(m(x).feature_maps, back(x).feature_maps))


def test_transformers_heads_run_on_it():
    """The models that take a backbone_config build on swinkit's backbone and run at a size that pads."""
    bb = backbone_config(dict(SMALL))
    upernet = transformers.UperNetForSemanticSegmentation(transformers.UperNetConfig(
        backbone_config=bb, hidden_size=16, auxiliary_channels=8, num_labels=3)).eval()
    m2f = transformers.Mask2FormerForUniversalSegmentation(transformers.Mask2FormerConfig(
        backbone_config=bb, num_labels=3, hidden_dim=32, feature_size=32, mask_feature_size=32, encoder_layers=1,
        decoder_layers=2, num_queries=5, dim_feedforward=32, encoder_feedforward_dim=32, num_attention_heads=2)).eval()
    x = torch.randn(1, 3, *PADS)
    with torch.no_grad():
        assert upernet(pixel_values=x).logits.shape == (1, 3, *PADS)
        out = m2f(pixel_values=x)
    assert out.class_queries_logits.shape == (1, 5, 4) and out.masks_queries_logits.shape[1] == 5
    assert isinstance(m2f.model.pixel_level_module.encoder, SwinkitBackbone)


def test_any_swinkit_checkpoint_becomes_the_backbone(tmp_path):
    """A swinkit classifier file -> hf_backbone_from_checkpoint: its stages, its weights."""
    cfg = swinkit.SwinConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in SMALL.items()}, num_classes=3,
                               window_mode="pad")
    clf = randomize_(swinkit.SwinTransformer(cfg)).eval()
    swinkit.save_model(clf, tmp_path / "clf.safetensors")
    bb = hf_backbone_from_checkpoint(tmp_path / "clf.safetensors", out_features=["stage2", "stage3"],
                                     out_norms=False)
    x = torch.randn(1, 3, *PADS)
    with torch.no_grad():
        ref = clf.forward_intermediates(x, [1, 2], intermediates_only=True)
        got = bb(x).feature_maps
    assert all(torch.equal(p, q) for p, q in zip(ref, got))
