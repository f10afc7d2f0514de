"""The task interface: typed settings (flags, recipes, round trips), parameter groups for any model that holds a
Swin, the recipe picked for small data, model names in the log, and a new task trained, evaluated and used for
prediction through the one loop without copying it."""
import argparse
import csv
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import TensorDataset

import swinkit
from swinkit import tasks, train as train_mod
from swinkit.cli import main
from swinkit.config import SwinConfig
from swinkit.tasks import TASKS, get_task
from swinkit.tasks.base import LOOP_SETTINGS, Loaded, Task, TaskSettings, TrainSettings, flat_key, setting
from swinkit.tasks.classify import ClassifySettings


def parse(*argv: str) -> TrainSettings:
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser, "train", argv=list(argv))
    return train_mod.resolve_settings(parser.parse_args(list(argv)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """2 classes x 24 train / 4 val images, 16x16."""
    root = tmp_path_factory.mktemp("two")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 4)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


# ---- settings


def test_flat_keys_are_unique_and_every_recipe_sets_real_settings():
    for name in TASKS:
        task = get_task(name)
        keys = [flat_key(f) for g in (*LOOP_SETTINGS.values(), task.Settings) for f in dataclasses.fields(g)]
        assert len(keys) == len(set(keys)), f"{name}: a flat key is defined twice"
        assert issubclass(task.Settings, TaskSettings) and task.default_recipe in task.recipes
        for recipe, values in task.recipes.items():
            assert set(values) <= set(keys), f"{name} recipe {recipe}: unknown keys {set(values) - set(keys)}"


def test_settings_round_trip_through_flat_dicts_and_reject_unknown_keys():
    flat = {**TrainSettings.defaults(ClassifySettings), "lr": 0.1, "ema": True, "ema_decay": 0.5, "depths": [2, 1]}
    s = TrainSettings.from_flat(flat, ClassifySettings)
    assert (s.optim.lr, s.ema.enabled, s.ema.decay, s.task.depths) == (0.1, True, 0.5, [2, 1])
    assert isinstance(s.task, ClassifySettings) and s.to_flat() == flat
    assert json.loads(json.dumps(s.to_flat())) == flat  # config.json stores it as it is
    with pytest.raises(ValueError, match=re.escape("unknown settings ['nope']; expected flat keys of the loop's")):
        TrainSettings.from_flat({"nope": 1}, ClassifySettings)


def test_flags_recipes_and_defaults_layer_in_that_order(folder):
    s = parse("--data", str(folder), "--recipe", "small", "--batch-size", "4", "--ema", "--ema-decay", "0.5",
              "--depths", "2", "1", "--window-size", "4")
    assert (s.run.task, s.run.recipe, s.run.recipe_note) == ("classify", "small", None)
    assert (s.loader.batch_size, s.ema.enabled, s.ema.decay, s.task.depths) == (4, True, 0.5, [2, 1])  # flags
    assert (s.optim.lr, s.schedule.epochs, s.task.embed_dim) == (1e-3, 60, 64)  # the recipe's
    assert (s.optim.clip_grad, s.task.smoothing, s.device.amp) == (5.0, 0.1, "auto")  # the settings' defaults
    assert s.task.window_size == 4  # one value means every stage
    assert parse("--task", "classify", "--data", str(folder), "--recipe", "small").to_flat() == \
        parse("--data", str(folder), "--recipe", "small").to_flat()  # classification is the default task


def test_each_task_brings_its_own_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--task", "classify", "--crop-size", "64"])
    assert "unrecognized arguments: --crop-size 64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--task", "nope"])
    assert "argument --task: invalid choice: 'nope'" in capsys.readouterr().err


# ---- the recipe picked for the data


def test_small_data_from_scratch_gets_the_small_recipe_and_one_line_why(folder, monkeypatch):
    s = parse("--data", str(folder))
    assert s.run.recipe == "small" and s.task.img_size == 32 and s.optim.lr == 1e-3
    assert s.run.recipe_note.startswith("recipe small: 48 training images from scratch (fewer than 20,000); the "
                                        "official recipe (Swin-T, 300 epochs of heavy augmentation")
    assert s.run.recipe_note.endswith("--recipe official keeps the official one") and "\n" not in s.run.recipe_note
    chosen = parse("--data", str(folder), "--model", "swin_t")  # the user chose a model: keep it, say what fits
    assert chosen.run.recipe == "official" and chosen.task.model == "swin_t"
    assert chosen.run.recipe_note.startswith("hint: 48 training images from scratch: consider --recipe small; ")
    assert parse("--data", str(folder), "--recipe", "official").run.recipe_note is None  # asked for: no remark
    assert parse().run.recipe == "digits"
    assert parse("--data", str(folder), "--pretrained", "x.pt").run.recipe == "finetune"
    monkeypatch.setattr("swinkit.tasks.classify.SMALL_DATA_IMAGES", 48)
    big = parse("--data", str(folder))
    assert (big.run.recipe, big.run.recipe_note) == ("official", None)


def test_the_note_is_printed_before_training(folder, tmp_path, capsys):
    args = ["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "16",
            "--threads", "1", "--embed-dim", "16", "--depths", "1", "1", "--num-heads", "1", "2", "--img-size", "16"]
    assert main(args) == 0
    out = capsys.readouterr().out
    note = json.loads((tmp_path / "run" / "config.json").read_text())["args"]["recipe_note"]
    assert note.startswith("hint: 48 training images") and out.splitlines()[0] == note


# ---- names in the log


def test_models_are_named_by_what_they_are():
    assert SwinConfig.from_name("swin_t").describe() == "swin_t"
    assert SwinConfig.from_name("swin_t", img_size=32, num_classes=10).describe() == "swin_t at 32x32"
    digits = SwinConfig.from_name("swin_t", img_size=32, patch_size=4, window_size=4, embed_dim=32, depths=(2, 2),
                                  num_heads=(2, 4))
    assert digits.describe() == "custom Swin V1: patch 4, window 4, C 32, depths 2-2, heads 2-4, 32x32"
    assert SwinConfig(version=2, window_size=[8, 8, 8, 4]).describe() == \
        "custom Swin V2: patch 4, window 8-8-8-4, C 96, depths 2-2-6-2, heads 3-6-12-24, 224x224"


# ---- parameter groups for any model that holds a Swin


def groups_by_name(model: nn.Module, layer_decay: float = 0.5) -> dict[str, tuple[float, float]]:
    """parameter name -> (lr, weight decay) from train.param_groups with lr 1 and weight decay 0.05."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in train_mod.param_groups(model, 1.0, 0.05, layer_decay)
            for p in g["params"]}


class Wrapped(nn.Module):
    """A Swin as `backbone.` plus a conv head: the shape of every dense-prediction model."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.decode_head = nn.Sequential(nn.Conv2d(32, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 3, 1))


@pytest.mark.parametrize("version", [1, 2])
def test_groups_of_a_wrapped_swin_equal_those_of_the_swin_alone(version):
    swin = swinkit.create_model("swin_t", version=version, embed_dim=16, depths=(2, 1), num_heads=(1, 2),
                                num_classes=0, pos_embed="absolute+relative")
    alone, wrapped = groups_by_name(swin), groups_by_name(Wrapped(swin))
    assert {n: g for n, g in wrapped.items() if n.startswith("backbone.")} == \
        {f"backbone.{n}": g for n, g in alone.items()}
    top = alone["norm.weight"][0]
    assert top == 1.0 and alone["patch_embed.proj.weight"] == (0.5 ** 4, 0.05)  # layer decay stays on
    assert alone["absolute_pos_embed"] == (0.5 ** 4, 0.0)
    table = "layers.0.blocks.0.attn." + ("relative_position_bias_table" if version == 1 else "logit_scale")
    assert alone[table] == (0.5 ** 3, 0.0)  # position tables / logit scale never decay
    assert wrapped["decode_head.0.weight"] == (top, 0.05)  # the head: top layer, decayed conv weights
    assert wrapped["decode_head.1.weight"] == wrapped["decode_head.0.bias"] == (top, 0.0)  # norms, biases


def test_groups_of_a_segmentation_model_equal_those_of_its_backbone():
    seg = pytest.importorskip("swinkit.models.segmentation")
    from swinkit.config import SegmentationConfig

    cfg = SegmentationConfig(backbone=dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4),
                                           window_size=4), num_classes=3, channels=16, aux_channels=8)
    model = seg.SegmentationModel(cfg)
    alone, whole = groups_by_name(model.backbone, 0.8), groups_by_name(model, 0.8)
    assert {n: g for n, g in whole.items() if n.startswith("backbone.")} == {f"backbone.{n}": g for n, g in alone.items()}
    heads = {n: g for n, g in whole.items() if not n.startswith("backbone.")}
    assert heads and {lr for lr, _ in heads.values()} == {1.0}
    assert whole["backbone.patch_embed.proj.weight"][0] == pytest.approx(0.8 ** 6)


def test_layer_ids_follow_the_official_depth_order():
    from swinkit.models.swin import layer_id  # the Swin's own rule: the loop asks the model (layer_ids)

    depths = (2, 2, 6, 2)
    assert layer_id("patch_embed.proj.weight", depths) == 0
    assert layer_id("layers.0.blocks.0.norm1.weight", depths) == 1
    assert layer_id("layers.1.downsample.reduction.weight", depths) == 2  # with the block before it
    assert layer_id("layers.2.blocks.5.mlp.fc2.bias", depths) == 10
    assert layer_id("norm3.weight", depths) == layer_id("head.fc.weight", depths) == 13


# ---- a new task through the same loop


@dataclass
class ToySettings(TaskSettings):
    data: str | None = setting(None)
    model: str = setting("linear")
    samples: int = setting(64, "training samples")


class ToyTask(Task):
    """Linear regression y = x @ w: a task in one class, with no image or Swin in sight."""

    name, primary_metric, Settings = "toy", "neg_mse", ToySettings
    recipes, default_recipe = {"default": dict(epochs=3, batch_size=8, lr=0.3, lr_base_size=8, warmup_epochs=0,
                                               weight_decay=0.0)}, "default"
    W = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def build_datasets(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.cfg.samples + 16, 4, generator=g)
        ds = TensorDataset(x, x @ self.W)
        return torch.utils.data.Subset(ds, range(self.cfg.samples)), torch.utils.data.Subset(ds, range(-16, 0))

    def build_model(self, config=None):
        return self.model_from_config(config or self.model_config(None))

    def model_config(self, model):
        return {"features": 4}

    @classmethod
    def model_from_config(cls, config):
        return nn.Linear(config["features"], 1)

    def loss(self, model, batch):
        x, y = (t.to(self.env.device) for t in batch)
        return nn.functional.mse_loss(model(x), y)

    @staticmethod
    def mse(model, loader) -> float:
        with torch.no_grad():
            return float(np.mean([nn.functional.mse_loss(model(x), y).item() for x, y in loader]))

    def evaluate(self, model, loader):
        mse = self.mse(model, loader)
        return {"loss": mse, "neg_mse": -mse}

    def checkpoint_meta(self):
        return {"weights_true": self.W.flatten().tolist()}

    @classmethod
    def run_eval(cls, loaded: Loaded, args):
        w = loaded.model.weight.detach().flatten()
        err = (w - torch.tensor(loaded.meta["weights_true"])).abs().max().item()
        return {"task": cls.name, "max_weight_error": err, "data": str(args.data)}, f"error {err:.3f}"

    @classmethod
    def run_predict(cls, loaded: Loaded, args):
        for path in args.images:
            print(f"{path}: {loaded.model(torch.full((1, 4), float(len(path)))).item():.4f}")
        return 0


def test_a_new_task_trains_in_the_loop_and_eval_and_predict_read_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tasks.TASKS, "toy", ToyTask)
    run = tmp_path / "toy"
    assert main(["train", "--task", "toy", "--out", str(run), "--threads", "1", "--samples", "48", "--ema"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"training Linear \(0\.00M params, task toy, recipe default\) on 48 training samples, 16 val", out)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert {"val_loss", "val_neg_mse", "ema_val_neg_mse"} <= set(rows[0])
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"]) / 2  # it learns
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "toy" and summary["best_val_neg_mse"] == max(float(r["ema_val_neg_mse"]) for r in rows)
    best, last = (torch.load(run / n, weights_only=True) for n in ("best.pt", "last.pt"))
    assert best["task"] == last["task"] == "toy" and best["config"] == {"features": 4}
    assert best["weights_true"] == ToyTask.W.flatten().tolist()  # checkpoint_meta beside the weights
    assert json.loads((run / "config.json").read_text())["task"] == "toy"
    assert f"done: val neg_mse {summary['val_neg_mse']:.4f}" in out  # Task.describe's default format

    assert main(["train", "--resume", str(run)]) == 0  # the task comes back from the run directory
    assert "resuming Linear" in capsys.readouterr().out

    assert main(["eval", "--checkpoint", str(run), "--data", "anything", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    w = best["model"]["weight"].flatten()
    assert result == {"task": "toy", "data": "anything",
                      "max_weight_error": pytest.approx((w - ToyTask.W.flatten()).abs().max().item())}
    assert main(["predict", "--checkpoint", str(run / "best.pt"), "abc"]) == 0
    expected = (torch.full((1, 4), 3.0) @ w[:, None] + best["model"]["bias"]).item()
    assert capsys.readouterr().out == f"abc: {expected:.4f}\n"


def test_a_checkpoint_of_an_unknown_task_is_a_clear_error(tmp_path, capsys):
    torch.save({"task": "telepathy", "model": {}, "config": {}}, tmp_path / "best.pt")
    assert main(["eval", "--checkpoint", str(tmp_path), "--data", str(tmp_path)]) == 1
    assert f"error: unknown task 'telepathy'; expected one of {list(TASKS)}" in capsys.readouterr().err


def test_backbone_lr_scale_leaves_heads_at_full_lr():
    """backbone_lr_scale multiplies every Swin parameter but its classifier head (the official Video Swin and
    dense-prediction fine-tuning recipes' backbone lr x 0.1); heads outside the Swin keep the full lr."""
    video = swinkit.create_video_model("video_swin_t", embed_dim=16, depths=(1, 1), num_heads=(1, 2), num_classes=3)
    names = {id(p): n for n, p in video.named_parameters()}
    lrs = {names[id(p)]: g["lr"] for g in train_mod.param_groups(video, 1.0, 0.05, 1.0, 0.1) for p in g["params"]}
    assert {n for n, lr in lrs.items() if lr == 1.0} == {"head.fc.weight", "head.fc.bias"}
    assert all(lr == pytest.approx(0.1) for n, lr in lrs.items() if not n.startswith("head."))
    swin = swinkit.create_model("swin_t", embed_dim=16, depths=(2, 1), num_heads=(1, 2), num_classes=0)
    wrapped = Wrapped(swin)
    names = {id(p): n for n, p in wrapped.named_parameters()}
    lrs = {names[id(p)]: g["lr"] for g in train_mod.param_groups(wrapped, 1.0, 0.05, 0.5, 0.1) for p in g["params"]}
    assert lrs["decode_head.0.weight"] == 1.0 and lrs["backbone.norm.weight"] == pytest.approx(0.1)
    assert lrs["backbone.patch_embed.proj.weight"] == pytest.approx(0.1 * 0.5 ** 4)  # times layer decay
