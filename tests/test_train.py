"""`swinkit train`: run-directory outputs, the recipe's optimiser and schedule, equivalences (accumulation,
gradient checkpointing, 2-process DDP), exact resume after SIGKILL and Ctrl-C, non-finite loss, fine-tuning."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import swinkit
from conftest import color_folder
from swinkit import train as train_mod
from swinkit.cli import main
from swinkit.config import SwinConfig
from swinkit import SwinTransformer
from swinkit.tasks import classify

ARCH = ["--model", "swin_t", "--img-size", "16", "--patch-size", "2", "--window-size", "4", "--embed-dim", "16",
        "--depths", "2", "1", "--num-heads", "1", "2"]
TINY = [*ARCH, "--drop-path-rate", "0", "--epochs", "2",
        "--warmup-epochs", "0.5", "--batch-size", "8", "--lr", "2e-3", "--lr-base-size", "8", "--threads", "1",
        "--mixup", "0", "--cutmix", "0", "--randaug-m", "5", "--scale", "0.5", "1", "--crop-pct", "1"]
SRC = Path(swinkit.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 classes (red, green, blue-ish noisy squares) x 16 train / 4 val images, 16x16."""
    return color_folder(tmp_path_factory.mktemp("colors"), 16, 4)


pytestmark = pytest.mark.usefixtures("keep_threads")


def train(folder, out, *extra) -> int:
    return main(["train", "--data", str(folder), "--out", str(out), *TINY, *extra])


def weights(run_dir, name="last.pt") -> dict:
    return torch.load(Path(run_dir) / name, weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict, atol=0.0):
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by {worst}"


def without_key_bias(sd: dict) -> dict:
    """The weights without the key bias (the middle third of each qkv.bias). Its gradient is zero in exact
    arithmetic (softmax ignores a shift of every key's score by the same q.b), so in float32 it is rounding noise,
    far below AdamW's eps = 1e-8, which lr m / (sqrt(v) + eps) multiplies by lr / eps = 2e5: the key bias wanders,
    differently for each summation order and CPU (to 3e-7 here, 1e-6 without vectorised kernels), and changes no
    output."""
    out = dict(sd)
    for k, v in sd.items():
        if k.endswith("attn.qkv.bias"):
            n = v.numel() // 3
            out[k] = torch.cat([v[:n], v[2 * n:]])
    return out


def rounding_of_updates(sd: dict, updates: int) -> float:
    """How far two runs whose gradients differ only in summation order may drift: AdamW passes a gradient's relative
    rounding error (~1e-6) to its step of at most lr = 2e-3, ~1e-9 per update, but each update rounds the weights to
    float32, and the two runs may round a weight to neighbouring values: at most one ulp of the largest weight per
    update (2^-23 of it; the norms' weights are ~1)."""
    return updates * torch.finfo(torch.float32).eps * max(v.float().abs().max().item() for v in sd.values())


# ---- outputs


def test_run_directory_holds_every_output(folder, tmp_path, capsys):
    assert train(folder, tmp_path / "run") == 0
    run = tmp_path / "run"
    out = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert re.search(rf"done: val top-1 {summary['val_top1']:.2f}%", out)
    name = "custom Swin V1: patch 2, window 4, C 16, depths 2-1, heads 1-2, 16x16"  # not "swin_t": it is not one
    assert re.search(re.escape(f"training {name} (") + r"0\.\d\dM params, task classify, recipe official\) on 48 "
                     r"images / 3 classes, val 12", out)
    assert summary["model"] == name and summary["task"] == "classify"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "val_top1", "val_top5", "lr", "images_per_sec"} <= set(rows[0])
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert summary["val_top1"] == pytest.approx(float(rows[-1]["val_top1"]))
    assert summary["images_per_sec"] > 0 and summary["wall_seconds"] > 0 and summary["skipped_files"] == 0
    assert summary["val_top5"] == 100.0  # 3 classes: top-5 holds them all
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(run.glob("events.out.tfevents.*"))
    config = json.loads((run / "config.json").read_text())
    assert config["class_names"] == ["blue", "green", "red"] and config["args"]["epochs"] == 2
    assert config["task"] == config["args"]["task"] == "classify" and config["model"]["name"] == "custom"
    last, best = (torch.load(run / n, weights_only=True) for n in ("last.pt", "best.pt"))
    assert last["epoch"] == 2 and last["step_in_epoch"] == 0 and last["global_step"] == 12
    assert {"optimizer", "scheduler", "scaler", "rng", "history"} <= set(last)
    assert last["task"] == best["task"] == "classify"  # eval and predict read the task from here
    model = SwinTransformer(SwinConfig.from_dict(config["model"]))  # config.json alone rebuilds the model
    model.load_state_dict(best["model"])
    assert model.cfg.num_classes == 3 and best["class_names"] == config["class_names"]
    assert best["metrics"]["val_top1"] == summary["best_val_top1"]
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_an_existing_run_is_not_overwritten(folder, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    torch.save({}, tmp_path / "run" / "last.pt")
    assert train(folder, tmp_path / "run") == 1
    err = capsys.readouterr().err
    assert f"already holds a run: continue it with --resume {tmp_path / 'run'}" in err


def test_bad_settings_are_clear_errors(folder, tmp_path, capsys):
    assert train(folder, tmp_path / "a", "--amp", "fp16", "--device", "cpu") == 1
    assert "--amp fp16 needs a GPU" in capsys.readouterr().err
    assert train(folder, tmp_path / "b", "--batch-size", "64") == 1
    assert ("the training set has 48 images per process, fewer than one update's --batch-size 64 x "
            "--accum-steps 1; lower them") in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "a"), "--lr", "1"]) == 1
    assert "--resume continues a run with its saved settings; got other flags too: ['--lr']" in \
        capsys.readouterr().err


# ---- optimiser and schedule


def test_param_groups_follow_no_weight_decay_and_layer_decay():
    model = swinkit.create_model("swin_t", embed_dim=16, depths=(2, 1), num_heads=(1, 2), num_classes=3)
    groups = train_mod.param_groups(model, 1.0, 0.05, 0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    assert set(by_name) == set(names.values())
    no_decay = {n for n, g in by_name.items() if g["weight_decay"] == 0}
    assert no_decay == model.no_weight_decay()
    assert {"layers.0.blocks.0.attn.relative_position_bias_table", "patch_embed.norm.weight"} <= no_decay
    # 3 blocks: patch embed at depth 0, blocks 1..3 (merging with the block before it), norm and head at 4
    scale = {n: g["lr"] for n, g in by_name.items()}
    assert scale["patch_embed.proj.weight"] == 0.5 ** 4
    assert scale["layers.0.blocks.1.mlp.fc1.weight"] == 0.5 ** 2
    assert scale["layers.1.downsample.reduction.weight"] == scale["layers.0.blocks.1.mlp.fc1.weight"]
    assert scale["layers.1.blocks.0.attn.qkv.weight"] == 0.5 ** 1
    assert scale["head.fc.weight"] == scale["norm.weight"] == 1.0


def test_warmup_then_cosine_per_update():
    f = train_mod.WarmupCosine(lr=1.0, warmup_lr=0.01, min_lr=0.1, warmup=10, total=110)
    assert f(0) == pytest.approx(0.01) and f(5) == pytest.approx(0.505) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_step_schedule_halves_at_the_milestones():
    f = train_mod.WarmupCosine(lr=2.0, warmup_lr=2.0, min_lr=0.0, warmup=0, total=100,
                               milestones=[0.5, 0.8, 0.9, 0.95], gamma=0.5)
    assert [f(s) for s in (0, 49, 50, 79, 80, 90, 95, 99)] == [1, 1, 0.5, 0.5, 0.25, 0.125, 0.0625, 0.0625]


def test_betas_and_step_schedule_reach_the_optimizer(folder, tmp_path):
    args = main_args(folder, tmp_path / "r", "--betas", "0.9", "0.99", "--schedule", "step", "--milestones", "0.5",
                     "--gamma", "0.1", "--warmup-epochs", "0")
    trainer = train_mod.Trainer(train_mod.resolve_settings(args))
    assert trainer.opt.param_groups[0]["betas"] == (0.9, 0.99)
    total = trainer.s.schedule.epochs * trainer.updates_per_epoch
    lam = trainer.sched.lr_lambdas[0]
    assert lam(total // 2 - 1) == 1.0 and lam(total // 2) == pytest.approx(0.1)


def test_lr_scales_with_the_total_batch(folder, tmp_path):
    args = main_args(folder, tmp_path / "r", "--batch-size", "4", "--accum-steps", "3", "--lr", "5e-4",
                     "--lr-base-size", "512", "--layer-decay", "1")
    trainer = train_mod.Trainer(train_mod.resolve_settings(args))
    assert trainer.lrs["lr"] == pytest.approx(5e-4 * 12 / 512)
    assert trainer.opt.param_groups[0]["initial_lr"] == pytest.approx(5e-4 * 12 / 512)
    assert trainer.updates_per_epoch == 48 // 12


def main_args(folder, out, *extra, flags=TINY):
    import argparse

    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser, "train")
    return parser.parse_args(["--data", str(folder), "--out", str(out), *flags, *extra])


# ---- equivalences


def test_accumulation_and_grad_checkpointing_match_one_big_batch(folder, tmp_path):
    assert train(folder, tmp_path / "big", "--epochs", "1") == 0
    assert train(folder, tmp_path / "accum", "--epochs", "1", "--batch-size", "4", "--accum-steps", "2") == 0
    assert train(folder, tmp_path / "ckpt", "--epochs", "1", "--grad-checkpointing") == 0
    big = weights(tmp_path / "big")  # 6 updates of 8 images; accum: the same 6 of 2 x 4 images
    # 6 ulps of the largest weight (measured 3e-8, and 1.2e-7 = 1 ulp without vectorised kernels); a lost or extra
    # micro-batch moves weights by ~lr = 2e-3
    assert_same_weights(without_key_bias(big), without_key_bias(weights(tmp_path / "accum")),
                        atol=rounding_of_updates(big, 6))
    assert_same_weights(weights(tmp_path / "big"), weights(tmp_path / "ckpt"), atol=0.0)


@pytest.mark.parametrize("sharding", ["--no-fsdp", "--fsdp"])
def test_two_processes_match_one_process_with_the_same_global_batch(folder, tmp_path, sharding):
    """torchrun, 2 CPU processes with gloo (DDP, or FSDP), batch 4 each == 1 process with batch 8, augmentation
    on: same data order, same per-image augmentation, gradients averaged over the global batch."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "swinkit",
           "train", "--data", str(folder), "--out", str(tmp_path / "ddp"), *TINY, "--batch-size", "4", sharding]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, "\n".join(line for line in proc.stderr.splitlines() if "Warning" not in line)[-6000:]
    assert train(folder, tmp_path / "single") == 0
    ddp, single = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("ddp", "single"))
    assert ddp["world_size"] == 2 and ddp["global_step"] == single["global_step"] == 12
    # averaging two processes' gradients is the accumulation test's case: at most one ulp of the largest weight per
    # update apart (measured 2 ulps over the 12 updates); the gradients of one process alone move them by ~lr
    assert_same_weights(without_key_bias(ddp["model"]), without_key_bias(single["model"]),
                        atol=rounding_of_updates(single["model"], 12))
    # losses of order 1 (ln 3 at the start) from weights this close, averaged in another order: float32 rounding,
    # ~1e-7 (measured 6e-8); 1e-4 is far under what one process's half of the images alone would report
    for a, b in zip(ddp["history"], single["history"]):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4) and a["val_top1"] == b["val_top1"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)  # averaged over both processes


# ---- faults


KILL_AT_UPDATE = textwrap.dedent("""
    import os, signal, sys
    from swinkit import train
    from swinkit.cli import main
    update = train.Trainer._update
    def update_then_die(self):
        update(self)
        if self.global_step == {step}:
            os.kill(os.getpid(), signal.{sig})
    train.Trainer._update = update_then_die
    sys.exit(main(sys.argv[1:]))
""")


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(folder, tmp_path):
    every = ["--ckpt-every", "4", "--ema"]  # 6 updates per epoch: mid-epoch checkpoints at updates 4 and 8
    script = KILL_AT_UPDATE.format(step=9, sig="SIGKILL")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", script, "train", "--data", str(folder), "--out",
                           str(tmp_path / "killed"), *TINY, *every], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 2, 8)  # mid-epoch 2
    assert main(["train", "--resume", str(tmp_path / "killed")]) == 0
    assert train(folder, tmp_path / "straight", *every) == 0
    resumed, straight = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("killed", "straight"))
    assert_same_weights(resumed["model"], straight["model"])
    assert_same_weights(resumed["ema"], straight["ema"])
    assert resumed["optimizer"]["state"].keys() == straight["optimizer"]["state"].keys()
    for k, s in straight["optimizer"]["state"].items():
        assert torch.equal(resumed["optimizer"]["state"][k]["exp_avg_sq"], s["exp_avg_sq"])
    assert [r["val_loss"] for r in resumed["history"]] == [r["val_loss"] for r in straight["history"]]
    assert [r["train_loss"] for r in resumed["history"]] == \
        pytest.approx([r["train_loss"] for r in straight["history"]])
    rows = list(csv.DictReader(open(tmp_path / "killed" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_ctrl_c_saves_and_exits_cleanly_then_resumes_exactly(folder, tmp_path, monkeypatch, capsys):
    update = train_mod.Trainer._update

    def update_then_interrupt(self):
        update(self)
        if self.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_mod.Trainer, "_update", update_then_interrupt)
    handler = signal.getsignal(signal.SIGINT)
    assert train(folder, tmp_path / "stopped", "--mixup", "0.8", "--cutmix", "1.0") == 130
    out = capsys.readouterr().out
    assert f"state saved; continue with swinkit train --resume {tmp_path / 'stopped'}" in out
    state = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 4, 4)  # stops after the next update
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(train_mod.Trainer, "_update", update)
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    assert main(["train", "--resume", str(tmp_path / "stopped")]) == 0
    assert train(folder, tmp_path / "straight", "--mixup", "0.8", "--cutmix", "1.0") == 0
    assert_same_weights(weights(tmp_path / "stopped"), weights(tmp_path / "straight"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(folder, tmp_path, monkeypatch, capsys):
    create = classify.create_model
    calls = []

    def poisoned(*args, **kwargs):
        model = create(*args, **kwargs)

        def hook(module, inputs, output):
            calls.append(module.training)
            return output * float("nan") if sum(calls) == 8 else output  # 2nd training batch of epoch 2
        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(classify, "create_model", poisoned)
    assert train(folder, tmp_path / "run") == 1
    last = tmp_path / "run" / "last.pt"
    err = capsys.readouterr().err
    assert re.search(re.escape("error: non-finite loss (nan) at epoch 2, step 2, lr ") + r"[0-9.e-]+" + re.escape(
        f": training stopped; the last good checkpoint {last} is kept. Try a lower --lr"), err)
    state = torch.load(last, weights_only=True)
    assert state["epoch"] == 1 and state["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# ---- fine-tuning


def test_pretrained_reinitialises_the_head_and_keeps_the_backbone(folder, tmp_path):
    pytest.importorskip("swinkit.io.load")
    assert train(folder, tmp_path / "src", "--epochs", "1") == 0
    two = tmp_path / "two"
    for split in ("train", "val"):
        for name in ("blue", "red"):
            (two / split).mkdir(parents=True, exist_ok=True)
            os.symlink(folder / split / name, two / split / name)
    args = main_args(two, tmp_path / "ft", "--pretrained", str(tmp_path / "src" / "best.pt"),
                     flags=TINY[len(ARCH):])
    settings = train_mod.resolve_settings(args)
    assert settings.run.recipe == "finetune" and settings.optim.layer_decay == 0.9
    trainer = train_mod.Trainer(settings)
    source = weights(tmp_path / "src", "best.pt")
    tuned = trainer.model.state_dict()
    assert tuned["head.fc.weight"].shape == (2, 32)
    assert_same_weights({k: v for k, v in source.items() if not k.startswith("head.")},
                        {k: v for k, v in tuned.items() if not k.startswith("head.")})
    lrs = sorted({g["lr"] for g in trainer.opt.param_groups})
    assert lrs[-1] / lrs[0] == pytest.approx(0.9 ** -4)  # layer decay over 3 blocks + embed and head
