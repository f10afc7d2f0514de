"""SimMIM pre-training: masks (exact count, 32x32 block structure, per image and seeded), parity with transformers'
SwinForMaskedImageModeling (reconstruction and loss), the L1 on masked pixels only, and `swinkit train --task
pretrain` -> eval / predict figure -> fine-tuning its encoder as a classifier."""
import argparse
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from swinkit import tasks, train as train_mod
from swinkit.cli import main
from swinkit.config import SwinConfig
from swinkit.models.simmim import (SimMIM, is_simmim_state_dict, masked_l1, pixel_mask, random_mask, random_masks,
                                   simmim_encoder_state_dict)
from swinkit.models.swin import SwinTransformer
from swinkit.tasks.pretrain import MaskedImages, from_hf_simmim, simmim_figure

from conftest import randomize_

TINY = dict(img_size=64, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4,
            drop_path_rate=0.0)
TINY_FLAGS = ["--img-size", "64", "--patch-size", "4", "--window-size", "4", "--embed-dim", "16", "--depths", "1", "1",
              "--num-heads", "2", "4"]


@pytest.fixture
def pretrain_registered(monkeypatch):
    monkeypatch.setitem(tasks.TASKS, "pretrain", "swinkit.tasks.pretrain:PretrainTask")


def photo(seed: int, h: int = 80, w: int = 72) -> Image.Image:
    """A smooth random colour image (something a decoder can partly predict)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


# ---- masks


@pytest.mark.parametrize("size", [(64, 64), (96, 96), (192, 192), (64, 128)])
def test_masks_mask_exactly_round_ratio_blocks_of_32_pixels(size):
    p, m, ratio = 4, 32, 0.6
    masks = random_masks(16, size, m, p, ratio, torch.Generator().manual_seed(0))  # (B, H/p, W/p)
    gh, gw, s = size[0] // m, size[1] // m, m // p
    assert masks.shape == (16, size[0] // p, size[1] // p) and masks.dtype == torch.bool
    blocks = masks.view(16, gh, s, gw, s)
    per_block = blocks.float().mean((2, 4))  # (B, gh, gw): 0 or 1 when every block is fully masked or not
    assert torch.all((per_block == 0) | (per_block == 1))
    assert per_block.sum((1, 2)).tolist() == [round(ratio * gh * gw)] * 16
    assert len({tuple(b.flatten().tolist()) for b in per_block}) > 1  # images get different masks
    # pixel level: the (B, 1, H, W) mask has the same share
    assert pixel_mask(masks, p).shape == (16, 1, *size)
    assert pixel_mask(masks, p).float().mean().item() == pytest.approx(round(ratio * gh * gw) / (gh * gw))


def test_masks_follow_their_seed_and_torchs_default_generator():
    def draw(seed):
        return random_masks(4, (96, 96), generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))
    torch.manual_seed(5)
    a = random_mask((96, 96))
    torch.manual_seed(5)
    assert torch.equal(a, random_mask((96, 96)))  # what the loop's per-sample seeding relies on


def test_mask_geometry_errors_say_what_to_do():
    with pytest.raises(ValueError, match=re.escape("expected an input whose height and width are multiples of "
                                                   "mask_patch_size 32, got 80x64; resize or crop to e.g. 96x64")):
        random_mask((80, 64))
    with pytest.raises(ValueError, match="mask_patch_size must be a multiple of the model's patch_size 3, got 32"):
        random_mask((64, 64), patch_size=3)
    model = SimMIM(SwinConfig(**TINY))
    with pytest.raises(ValueError, match=re.escape("expected a bool mask of shape (1, 16, 16) (B, H/patch, W/patch), "
                                                   "got torch.int64 (1, 16, 16)")):
        model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 16, 16, dtype=torch.long))


# ---- the model


@pytest.mark.parametrize("absolute", [False, True])
def test_matches_transformers_swin_for_masked_image_modeling(absolute):
    """Random weights copied from transformers into swinkit (from_hf_simmim): reconstruction and loss within 1e-4,
    with and without absolute position embeddings (the mask token goes in before them)."""
    from transformers import SwinConfig as HFSwinConfig, SwinForMaskedImageModeling

    hf_cfg = HFSwinConfig(image_size=64, patch_size=4, num_channels=3, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                          window_size=4, encoder_stride=8, drop_path_rate=0.0, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, use_absolute_embeddings=absolute)
    hf = randomize_(SwinForMaskedImageModeling(hf_cfg), std=0.2).eval()
    ours = SimMIM(SwinConfig(**TINY, pos_embed="absolute+relative" if absolute else "relative")).eval()
    ours.load_state_dict(from_hf_simmim(hf.state_dict()))
    assert ours.encoder_stride == 8
    x = torch.randn(3, 3, 64, 64)
    mask = random_masks(3, (64, 64), generator=torch.Generator().manual_seed(0))  # (3, 16, 16)
    with torch.no_grad():
        out = hf(pixel_values=x, bool_masked_pos=mask.flatten(1))
        loss, rec = ours(x, mask)
    assert rec.shape == out.reconstruction.shape == x.shape
    torch.testing.assert_close(rec, out.reconstruction, atol=1e-4, rtol=0)
    assert abs(loss.item() - out.loss.item()) < 1e-4
    with torch.no_grad():  # the mask token is used: another mask, another reconstruction
        assert (ours(x, ~mask)[1] - rec).abs().max() > 1e-3


def test_l1_counts_only_masked_pixels():
    model = randomize_(SimMIM(SwinConfig(**TINY))).eval()
    x = torch.randn(2, 3, 64, 64)
    mask = random_masks(2, (64, 64), generator=torch.Generator().manual_seed(1))
    m = pixel_mask(mask, 4).expand_as(x)  # (B, 3, H, W)
    rec = model(x, mask)[1].detach().requires_grad_()
    loss = masked_l1(x, rec, mask, 4)
    assert loss.item() == pytest.approx((rec - x).abs()[m].mean().item(), rel=1e-5)  # mean over masked values
    loss.backward()
    assert torch.all(rec.grad[~m] == 0) and torch.all(rec.grad[m] != 0)
    changed = rec.detach() + 10.0 * (~m)  # every unmasked pixel moved far
    assert masked_l1(x, changed, mask, 4).item() == loss.item()
    assert masked_l1(x, rec.detach() + 10.0 * m, mask, 4).item() > loss.item() + 1


def test_mask_token_and_encoder_position_tables_have_no_weight_decay():
    model = SimMIM(SwinConfig(**TINY))
    names = train_mod.no_weight_decay(model)
    assert "mask_token" in names and "encoder.layers.0.blocks.0.attn.relative_position_bias_table" in names
    assert "decoder.0.weight" not in names and "encoder.layers.0.blocks.0.attn.qkv.weight" not in names
    assert is_simmim_state_dict(model.state_dict())
    assert set(simmim_encoder_state_dict(model.state_dict())) == set(model.encoder.state_dict())


# ---- the task through the loop, eval, predict and fine-tuning


def test_val_masks_are_fixed_per_image_by_the_seed(tmp_path):
    from swinkit.data import eval_transform

    for i in range(4):
        photo(i).save(tmp_path / f"{i}.png")
    files, tf = sorted(tmp_path.glob("*.png")), eval_transform(96, 1.0)

    def masks(seed):
        ds = MaskedImages(files, tf, 32, 4, 0.6, seed=seed)
        return torch.stack([ds[i][1] for i in range(4)])

    a = masks(0)
    assert a.shape == (4, 24, 24) and torch.equal(a, masks(0)) and not torch.equal(a, masks(1))
    assert a.view(4, -1).unique(dim=0).shape[0] > 1  # one mask per image, not one for all


def parse(*argv: str):
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser, "train", argv=list(argv))
    return train_mod.resolve_settings(parser.parse_args(list(argv)))


def test_recipes_follow_the_data_and_resolve_rejects_what_cannot_work(pretrain_registered, tmp_path):
    (tmp_path / "sub").mkdir()
    for i in range(3):
        photo(i).save(tmp_path / "sub" / f"{i}.png")
    s = parse("--task", "pretrain", "--data", str(tmp_path))
    assert (s.run.recipe, s.task.img_size, s.task.embed_dim) == ("small", 96, 32)
    assert s.run.recipe_note.startswith("recipe small: 3 images (fewer than 20,000)")
    s = parse("--task", "pretrain", "--data", str(tmp_path), "--embed-dim", "64")  # an architecture flag: official
    assert (s.run.recipe, s.task.img_size, s.task.window_size, s.optim.lr, s.schedule.epochs) == \
        ("simmim", 192, 6, 2e-4, 100)
    with pytest.raises(ValueError, match=re.escape("--img-size 80 must be a multiple of --mask-patch-size 32, e.g. 96")):
        parse("--task", "pretrain", "--data", str(tmp_path), "--img-size", "80")
    with pytest.raises(ValueError, match=re.escape("the pretrain task learns from unlabelled images: pass --data DIR")):
        parse("--task", "pretrain")


def test_pretrain_run_eval_figure_and_fine_tune_its_encoder(pretrain_registered, tmp_path, capsys, monkeypatch):
    data = tmp_path / "unlabelled"
    for i in range(8):  # nested folders: searched recursively, the folder names are no labels
        folder = data / ("a" if i % 2 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        photo(i).save(folder / f"{i}.png")
    (data / "broken.jpg").write_bytes(b"not a jpeg")
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="skipped 1 unreadable image file"):
        assert main(["train", "--task", "pretrain", "--data", str(data), *TINY_FLAGS, "--epochs", "1",
                     "--warmup-epochs", "0", "--batch-size", "2", "--lr", "1e-3", "--lr-base-size", "2",
                     "--out", str(run)]) == 0
    ck = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert ck["task"] == "pretrain" and ck["config"]["embed_dim"] == 16 and ck["config"]["num_classes"] == 0
    assert ck["simmim"]["mask_patch_size"] == 32 and ck["simmim"]["mask_ratio"] == 0.6
    assert {k.split(".")[0] for k in ck["model"]} == {"encoder", "mask_token", "decoder"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_files"] == 1 and summary["epochs"] == 1 and np.isfinite(summary["best_val_masked_psnr"])
    capsys.readouterr()

    # eval: the same masked L1 and PSNR on a folder, with fixed masks
    assert main(["eval", "--checkpoint", str(run), "--data", str(data / "a"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == 4 and result["img_size"] == 64 and 0 < result["loss"] and result["masked_psnr"] > 0

    # predict: the figure (input, masked, reconstruction, prediction per image), written atomically
    fig = tmp_path / "figs" / "simmim.png"
    assert main(["predict", "--checkpoint", str(run), str(data / "a" / "1.png"), str(data / "a" / "3.png"),
                 "--out", str(fig)]) == 0
    with Image.open(fig) as im:
        assert im.format == "PNG" and 1.4 < im.width / im.height < 2.6  # 4 columns x 2 rows
    assert [p.name for p in fig.parent.iterdir()] == ["simmim.png"]
    assert main(["viz", "simmim", "--checkpoint", str(run), "--images", str(data / "a" / "1.png"), "--out",
                 str(tmp_path / "viz.png")]) == 0
    with Image.open(tmp_path / "viz.png") as im:
        assert 2.5 < im.width / im.height < 5  # 4 columns x 1 row

    # the encoder as a classifier: the same features, only the new head missing
    loaded = tasks.get_task("pretrain").load(run / "best.pt", ck).model
    clf = SwinTransformer(SwinConfig.from_dict({**ck["config"], "num_classes": 3})).eval()
    result = clf.load_state_dict(simmim_encoder_state_dict(ck["model"]), strict=False)
    assert sorted(result.missing_keys) == ["head.fc.bias", "head.fc.weight"] and not result.unexpected_keys
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(clf.forward_features(x), loaded.encoder.forward_features(x), rtol=0, atol=0)

    # `swinkit train --pretrained RUN` (classification) starts from the encoder (read_raw takes a SimMIM state
    # dict's encoder)
    classes = tmp_path / "classes"
    for i in range(8):
        (classes / f"k{i % 2}").mkdir(parents=True, exist_ok=True)
        photo(i).save(classes / f"k{i % 2}" / f"{i}.png")
    from swinkit.tasks.classify import ClassifyTask

    built, build = {}, ClassifyTask.build_model

    def build_and_record(self, config=None):  # the weights the fine-tuning starts from
        model = build(self, config)
        built["sd"] = {k: v.clone() for k, v in model.state_dict().items()}
        return model

    monkeypatch.setattr(ClassifyTask, "build_model", build_and_record)
    assert main(["train", "--data", str(classes), "--pretrained", str(run), "--img-size", "64", "--epochs", "1",
                 "--batch-size", "2", "--val-fraction", "0.25", "--out", str(tmp_path / "ft")]) == 0
    encoder = simmim_encoder_state_dict(ck["model"])
    assert set(built["sd"]) - set(encoder) == {"head.fc.weight", "head.fc.bias"}
    assert all(torch.equal(built["sd"][k], v) for k, v in encoder.items())
    assert built["sd"]["head.fc.weight"].shape == (2, 32)


def test_figure_draws_one_row_per_image(tmp_path):
    model = randomize_(SimMIM(SwinConfig(**TINY)))
    path = simmim_figure(model, torch.randn(3, 3, 64, 64), tmp_path / "f.png", seed=0)
    with Image.open(path) as im:
        assert im.format == "PNG" and 1.0 < im.width / im.height < 1.6  # 4 columns x 3 rows
    assert model.training  # the figure leaves the model's mode as it was


def test_fitting_one_batch_lowers_the_loss_and_trains_every_part():
    model = SimMIM(SwinConfig(**TINY))
    x = torch.nn.functional.interpolate(torch.randn(4, 3, 4, 4), size=(64, 64), mode="bicubic")  # smooth images
    mask = random_masks(4, (64, 64), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for _ in range(25):
        loss = model(x, mask)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # the random decoder starts worse than reconstructing nothing (0.92 against the masked pixels' own mean |x|,
    # 0.78); 25 steps must fit it below that, to a reconstruction that predicts something of the hidden pixels
    # (0.74 here; float32 rounding moves a step's loss by ~1e-6, so no CPU decides the comparison)
    nothing = masked_l1(x, torch.zeros_like(x), mask, model.cfg.patch_size).item()
    assert losses[-1] < nothing < losses[0]
    moved = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    assert moved == {"encoder", "mask_token", "decoder"}
