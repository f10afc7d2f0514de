"""Mask2Former (panoptic / universal segmentation): transformers' own model on swinkit's Swin. Parity with
transformers' Mask2Former on its Swin / Swinv2 (random weights), the checkpoint formats (transformers directory,
swinkit file, training checkpoint) and their round trips, create_panoptic_model and its loss, the post-processing,
the `models` table and the errors."""
import dataclasses
import json
import re
from types import SimpleNamespace

import pytest
import torch

import swinkit
from swinkit import PanopticConfig
from swinkit.cli import main
from swinkit.config import PANOPTIC_VARIANTS
from swinkit.io.files import CheckpointError

from conftest import randomize_

transformers = pytest.importorskip("transformers")
pytest.importorskip("scipy")  # the Hungarian matcher: Mask2Former's loss is built with the model

SWIN = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=4)
HEAD = dict(hidden_dim=32, feature_size=32, mask_feature_size=32, encoder_layers=1, decoder_layers=3, num_queries=10,
            dim_feedforward=64, encoder_feedforward_dim=64, num_attention_heads=2)
NAMES = ["cat", "dog", "car", "sky", "road"]
# 75 x 101: the patch embedding pads; the stage maps 19x26, 10x13, 5x7, 3x4 pad in every windowed block
SIZE = (75, 101)
BACKBONE = "model.pixel_level_module.encoder."


def hf_mask2former(version: int = 1):
    """transformers' Mask2Former on its own tiny Swin (V1) or Swinv2 with random weights, in eval mode. Swinv2 fixes
    its windows from image_size when built: at 64 px the last two stage maps (4, 2) are no larger than the window, so
    those stages have windows of 4 and 2, unshifted."""
    swin = transformers.SwinConfig if version == 1 else transformers.Swinv2Config
    bc = swin(image_size=224 if version == 1 else 64, out_features=["stage1", "stage2", "stage3", "stage4"], **SWIN)
    cfg = transformers.Mask2FormerConfig(backbone_config=bc, id2label=dict(enumerate(NAMES)), **HEAD)
    return randomize_(transformers.Mask2FormerForUniversalSegmentation(cfg), std=0.2).eval()


def saved(tmp_path, version: int = 1):
    """(transformers' model, its save_pretrained directory)."""
    hf = hf_mask2former(version)
    hf.save_pretrained(tmp_path / f"hf{version}")
    return hf, tmp_path / f"hf{version}"


def tiny_panoptic(**kw) -> "swinkit.PanopticModel":
    return swinkit.create_panoptic_model(num_classes=5, **{**SWIN, **HEAD, "drop_path_rate": 0.0, **kw})


def logits(model, x):
    with torch.no_grad():
        out = model(pixel_values=x)
    return out.class_queries_logits, out.masks_queries_logits


# ----------------------------------------------------------------------------------------------------------
# parity with transformers


@pytest.mark.parametrize("version", [1, 2])
def test_transformers_directory_loads_with_the_same_outputs(tmp_path, version):
    """A transformers Mask2Former directory (Swin / Swinv2 backbone) -> load_model, no hints -> PanopticModel with
    the class names, giving transformers' class and mask logits."""
    hf, path = saved(tmp_path, version)
    model = swinkit.load_model(path)
    assert isinstance(model, swinkit.PanopticModel) and not model.training
    assert model.cfg.backbone.version == version and model.cfg.out_norms == (version == 1)
    assert model.class_names == NAMES and model.cfg.num_classes == 5
    if version == 2:  # the windows and shifts transformers' Swinv2 fixed at 64 px
        bb = model.cfg.backbone
        assert bb.window_size[2:] == ((4, 4), (2, 2)) and bb.mixer[2:] == ("window", "window")
    x = torch.randn(2, 3, *SIZE)
    ref, ours = logits(hf, x), logits(model, x)
    exact = logits(hf.double(), x.double()), logits(model.double(), x.double())
    for r, o, r64, o64 in zip(ref, ours, *exact):
        assert r.shape == o.shape and r.std() > 0.05  # not a degenerate comparison
        # In float64 the two are the same function: float64 rounds 2^29 times finer than float32, so the float32
        # bound below scales to 2e-13 (measured <= 4e-14 over seeds). This is the check a wrong key or a misplaced
        # window fails: with random weights attention is nearly uniform, so such errors can hide in float32's noise.
        assert (o64 - r64).abs().max() <= 1e-12 * r64.abs().max()
        # In float32 rounding alone parts them: the longest sums are the last stage's MLP (n = 512 terms), which
        # float32 rounds by about sqrt(n) u = 1.3e-6 of their scale (u = 2^-24) and at worst by n u = 3e-5; some 30
        # sublayers deep, 1e-4 of the scale holds whatever kernels a CPU picks. Measured: 0 for V1 (the same
        # kernels), <= 2e-5 for V2, whose cosine attention scales its logits by up to 100 and computes them in
        # another order than transformers' Swinv2.
        assert (o - r).abs().max() <= 1e-4 * r.abs().max()


def test_transformers_4_directory_loads(tmp_path):
    """The facebook/mask2former-swin-* files were written by transformers 4: a backbone without the "swin." level,
    with query/key/value names; the head's names are unchanged."""
    from safetensors.torch import load_file, save_file

    _, path = saved(tmp_path)
    renames = [("encoder.swin.", "encoder."), ("attention.q_proj", "attention.self.query"),
               ("attention.k_proj", "attention.self.key"), ("attention.v_proj", "attention.self.value"),
               ("attention.o_proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
               ("mlp.fc2", "output.dense"), ("attention.relative_position_bias.relative", "attention.self.relative")]
    v4 = {}
    for k, v in load_file(path / "model.safetensors").items():
        if k.startswith(BACKBONE) and "swin.layernorm" not in k:
            for a, b in renames:
                k = k.replace(a, b)
        v4[k] = v
    assert sum(k.endswith(".attention.self.query.weight") for k in v4) == 8  # one per block
    v5 = swinkit.load_model(path).state_dict()
    save_file(v4, path / "model.safetensors", metadata={"format": "pt"})
    assert_same_state(swinkit.load_model(path).state_dict(), v5)


def assert_same_state(a: dict, b: dict, skip: tuple[str, ...] = ()):
    keys = [k for k in a if not k.startswith(skip)]
    assert sorted(keys) == sorted(k for k in b if not k.startswith(skip))
    for k in keys:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("version", [1, 2])
def test_convert_to_transformers_and_to_swinkit_round_trips(tmp_path, version, capsys):
    """--to hf writes a directory transformers reads alone (its own Swin backbone in config.json) holding the
    original's tensors; --to swinkit a file load_model reads back exactly."""
    hf, path = saved(tmp_path, version)
    assert main(["convert", str(path), str(tmp_path / "out"), "--to", "hf"]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["backbone_config"]["model_type"] == ("swin" if version == 1 else "swinv2")  # no swinkit needed
    back = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path / "out").eval()
    # SwinModel's final norm: stored by transformers, unused by its backbone, written as ones / zeros
    assert_same_state(back.state_dict(), hf.state_dict(), skip=(BACKBONE + "swin.layernorm.",))
    x = torch.randn(1, 3, *SIZE)
    assert all(torch.equal(a, b) for a, b in zip(logits(back, x), logits(hf, x)))
    assert back.config.id2label == dict(enumerate(NAMES))

    assert main(["convert", str(path), str(tmp_path / "m.safetensors")]) == 0
    assert "swinkit, Mask2Former" in capsys.readouterr().out
    a, b = swinkit.load_model(path), swinkit.load_model(tmp_path / "m.safetensors")
    assert_same_state(a.state_dict(), b.state_dict())
    assert b.class_names == NAMES and b.cfg == a.cfg


def test_swinkit_file_and_training_checkpoint_load(tmp_path):
    model = randomize_(tiny_panoptic(thing_classes=(0, 1, 2)), std=0.2).eval()
    model.class_names = NAMES
    assert PanopticConfig.from_dict(json.loads(json.dumps(model.cfg.to_dict()))) == model.cfg
    swinkit.save_model(model, tmp_path / "m.safetensors")
    torch.save({"task": "panoptic", "model": model.state_dict(), "config": model.cfg.to_dict(), "class_names": NAMES},
               tmp_path / "best.pt")
    for path in (tmp_path / "m.safetensors", tmp_path / "best.pt"):
        back = swinkit.load_model(path)
        assert type(back) is type(model) and back.cfg == model.cfg and back.class_names == NAMES
        assert_same_state(back.state_dict(), model.state_dict())
        assert back.cfg.stuff_classes == {3, 4}
    with pytest.warns(UserWarning, match="5 classes, the model 3: the class predictor is freshly initialised"):
        fewer = swinkit.load_model(tmp_path / "m.safetensors", num_classes=3)
    assert fewer.class_predictor.weight.shape == (4, 32) and fewer.cfg.thing_classes is None  # 3 classes + no object
    assert_same_state(fewer.state_dict(), model.state_dict(), skip=("class_predictor.", "criterion."))
    smaller = swinkit.load_model(tmp_path / "m.safetensors", window_size=2)  # the bias tables resized: 7x7 -> 3x3
    assert smaller.backbone.layers[0].blocks[0].attn.relative_position_bias_table.shape == (9, 1)
    assert_same_state(smaller.state_dict(), model.state_dict(), skip=(BACKBONE,))


def test_inspect(tmp_path, capsys):
    _, path = saved(tmp_path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "format:   hf (Mask2Former panoptic, Swin V1)" in out and "classes:  5: cat, dog, car, sky, road" in out
    assert "  num_queries: 10" in out and "  backbone.window_size: ((4, 4), (4, 4), (4, 4), (4, 4))" in out


# ----------------------------------------------------------------------------------------------------------
# building and training


def test_create_panoptic_model_trains_its_backbone():
    """transformers' loss (Hungarian matching, mask and dice losses on sampled points) on swinkit's backbone: finite,
    and its gradients reach the first block."""
    model = tiny_panoptic(train_num_points=256).train()
    assert model.cfg.name == "mask2former_swin_t" and model.cfg.thing_classes is None  # 5 classes: not COCO's
    masks = [(torch.rand(3, *SIZE) > 0.5).float(), (torch.rand(2, *SIZE) > 0.5).float()]
    classes = [torch.tensor([0, 3, 4]), torch.tensor([1, 1])]
    out = model(pixel_values=torch.randn(2, 3, *SIZE), mask_labels=masks, class_labels=classes)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss > 0
    out.loss.backward()
    grad = model.backbone.patch_embed.proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_create_panoptic_model_loads_a_backbone_checkpoint(tmp_path):
    classifier = swinkit.create_model("swin_t", num_classes=3, **SWIN)
    swinkit.save_model(classifier, tmp_path / "cls.safetensors")
    model = tiny_panoptic(backbone_checkpoint=tmp_path / "cls.safetensors")
    theirs = classifier.state_dict()
    ours = model.backbone.state_dict()
    shared = [k for k in ours if not re.fullmatch(r"norm\d\.(weight|bias)", k)]  # output norms start fresh
    assert shared and all(torch.equal(ours[k], theirs[k]) for k in shared)


def test_config_variants_and_overrides():
    for name in swinkit.list_panoptic_models():
        cfg = PanopticConfig.from_name(name)
        assert PanopticConfig.from_dict(json.loads(cfg.to_json())) == cfg
        assert cfg.num_classes == 133 and len(cfg.stuff_classes) == 53 and cfg.backbone.window_mode == "pad"
    assert PanopticConfig.from_name("mask2former_swin_l").num_queries == 200
    assert PanopticConfig.from_name("mask2former_swin_b").backbone.window_size[0] == (12, 12)
    cfg = PanopticConfig.from_name("mask2former_swin_t", num_classes=3, thing_classes=[0], drop_path_rate=0.1)
    assert cfg.stuff_classes == {1, 2} and cfg.backbone.drop_path_rate == 0.1


def test_models_table_measures_mask2former(monkeypatch, tmp_path, capsys):
    """`swinkit models` lists the variants with parameters and MACs measured on the meta device (here Swin-T only)
    beside the paper's: 47.4M of 47M, and 7% more MACs at 800 x 1216 than the paper's average over COCO images."""
    from swinkit import families
    from swinkit.tools import measure

    monkeypatch.setenv("SWINKIT_CACHE", str(tmp_path))
    swin_t = {"mask2former_swin_t": PANOPTIC_VARIANTS["mask2former_swin_t"]}
    monkeypatch.setattr(measure, "TABLE_ORDER", [dataclasses.replace(families.PANOPTIC, variants=swin_t)])
    assert main(["models", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert row["name"] == "mask2former_swin_t" and row["size"] == [800, 1200]
    assert abs(row["params_m"] / row["paper_params_m"] - 1) < 0.02
    assert 1.0 < row["gmacs"] / row["paper_gmacs"] < 1.1
    assert main(["models"]) == 0  # from the cache
    assert re.search(r"mask2former_swin_t +1 +800x1200 +7 +47\.4 +47\.0", capsys.readouterr().out)


# ----------------------------------------------------------------------------------------------------------
# post-processing


def outputs(class_logits, mask_logits):
    return SimpleNamespace(class_queries_logits=class_logits[None], masks_queries_logits=mask_logits[None])


def test_post_processing_agrees_with_transformers_where_their_rules_do():
    """With every score 1 and every mask probability 0 or 1 covering each pixel once or more, the official rule (a
    pixel of a mask below 0.5 stays void; areas of the unweighted masks) is transformers' post-processing: the same
    map and segments. Query 5 covers query 1's region and more, so owns too little of its mask and is dropped; query
    4 repeats the stuff class 3 of query 3, so the two fuse (last: transformers' ids collide otherwise)."""
    from swinkit.models.panoptic import post_process_panoptic

    owner = torch.tensor([[0, 1, 1, 2], [0, 3, 2, 2], [4, 3, 3, 2]]).repeat_interleave(128, 0).repeat_interleave(96, 1)
    masks = torch.stack([owner == q for q in range(5)] + [(owner == 1) | (owner == 2)]).float() * 60 - 30
    labels = torch.tensor([0, 1, 2, 3, 3, 2])
    classes = torch.nn.functional.one_hot(labels, 5).float() * 40  # (6, 4 classes + "no object"): scores 1
    out = outputs(classes, masks)  # 384 x 384 masks: transformers' fixed working size, so neither resizes them
    ours = post_process_panoptic(out, (384, 384), label_ids_to_fuse={3})[0]
    ref = transformers.Mask2FormerImageProcessor().post_process_panoptic_segmentation(
        out, label_ids_to_fuse={3})[0]
    assert torch.equal(ours["segmentation"], ref["segmentation"])
    assert ours["segments_info"] == list({s["id"]: s for s in ref["segments_info"]}.values())  # it repeats fused ones
    assert [s["label_id"] for s in ours["segments_info"]] == [0, 1, 2, 3]


def test_post_processing_leaves_unsure_pixels_void_fuses_stuff_and_crops_padding():
    from swinkit.models.panoptic import post_process_panoptic

    owner = torch.tensor([[0, 1, 9], [2, 2, 9]]).repeat_interleave(4, 0).repeat_interleave(4, 1)  # 9: no query sure
    masks = torch.stack([owner == q for q in range(3)]).float() * 20 - 10
    masks = torch.nn.functional.pad(masks, (0, 4, 0, 8), value=10.0)  # padding of the batch: sure of everything
    classes = torch.nn.functional.one_hot(torch.tensor([3, 3, 0]), 5).float() * 40
    result = post_process_panoptic(outputs(classes, masks), (64, 64), image_sizes=[(32, 48)], target_sizes=[(8, 12)],
                                   label_ids_to_fuse={3})[0]
    seg = result["segmentation"]
    assert seg.shape == (8, 12) and seg.dtype == torch.int32
    assert (seg[:, 8:] == 0).all() and (seg[:4, :8] == 1).all() and (seg[4:, :8] == 2).all()
    assert [(s["id"], s["label_id"], s["was_fused"]) for s in result["segments_info"]] == [(1, 3, True), (2, 0, False)]


def test_predict_panoptic_on_a_padded_batch():
    """Every query predicts the stuff class 3: one segment per image, at each target size."""
    model = randomize_(tiny_panoptic(thing_classes=(0, 1, 2)), std=0.2).eval()
    with torch.no_grad():
        model.class_predictor.bias[3], model.class_predictor.bias[-1] = 2.0, -20.0
    # random weights give mask logits of -1.2 to -0.3: a low mask threshold makes segments of them
    results = model.predict_panoptic(torch.randn(2, 3, 96, 128), image_sizes=[SIZE, (96, 128)],
                                     target_sizes=[(150, 202), (48, 64)], threshold=0.5, mask_threshold=0.3)
    assert [tuple(r["segmentation"].shape) for r in results] == [(150, 202), (48, 64)]
    for r in results:
        assert [(s["id"], s["label_id"], s["was_fused"]) for s in r["segments_info"]] == [(1, 3, True)]
        assert set(r["segmentation"].unique().tolist()) == {0, 1}


# ----------------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("part", ["head", "backbone"])
def test_a_renamed_tensor_is_named(tmp_path, part):
    from safetensors.torch import load_file, save_file

    _, path = saved(tmp_path)
    sd = load_file(path / "model.safetensors")
    key = next(k for k in sd if (".encoder.layers.0.blocks.0." if part == "backbone" else "transformer_module.") in k
               and k.endswith(".weight"))
    sd[key[:-len("weight")] + "weights"] = sd.pop(key)
    save_file(sd, path / "model.safetensors", metadata={"format": "pt"})
    tail = key.split("encoder.", 1)[1] if part == "backbone" else key  # the backbone's keys are named inside it
    with pytest.raises(CheckpointError, match=re.escape(tail[:-len("weight")] + "weights")):
        swinkit.load_model(path)


def test_errors(tmp_path, capsys):
    _, path = saved(tmp_path)
    assert main(["convert", str(path), str(tmp_path / "x.pth"), "--to", "official"]) == 2
    assert "choose one of swinkit, hf" in capsys.readouterr().err
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "maskformer"}))
    with pytest.raises(CheckpointError, match="'maskformer' model"):
        swinkit.load_model(path)
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="without their config"):
        swinkit.load_model(path)
    with pytest.raises(ValueError, match="decoder_layers must be >= 2"):
        PanopticConfig(decoder_layers=1)
    with pytest.raises(ValueError, match="multiple of 32"):
        PanopticConfig(feature_size=48)
    with pytest.raises(ValueError, match=r"thing_classes must be class indices in \[0, 5\)"):
        PanopticConfig(num_classes=5, thing_classes=(4, 5))
