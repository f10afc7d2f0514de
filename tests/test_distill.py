"""Knowledge distillation (swinkit/distill.py and the classify task's --teacher / --distill): the soft and hard losses
against hand computations, the distillation head (averaged at inference, folded, saved and loaded), the teacher's
resizing and renormalisation, self-distillation from the EMA, the setting errors, and short runs on the digits."""
import argparse
import copy
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from swinkit import SwinConfig, SwinTransformer
from swinkit import train as train_mod
from swinkit.cli import main
from swinkit.data import digits_folder
from swinkit.train.distill import (CONFIG_KEY, DistillationHead, Distiller, Teacher, add_distillation_head,
                             classifier_config, fold_distillation_head, hard_distillation_loss, load_classifier,
                             soft_distillation_loss)
from swinkit.io.load import write_checkpoint
from swinkit.tasks.base import Env
from swinkit.tasks.classify import ClassifyTask

from conftest import color_folder, randomize_

ARCH = ["--model", "swin_t", "--img-size", "16", "--patch-size", "2", "--window-size", "4", "--embed-dim", "16",
        "--depths", "1", "1", "--num-heads", "1", "2", "--drop-path-rate", "0"]
TINY = [*ARCH, "--epochs", "1", "--batch-size", "8", "--lr-base-size", "8", "--threads", "1", "--mixup", "0",
        "--cutmix", "0", "--smoothing", "0", "--randaug-n", "0", "--reprob", "0", "--crop-pct", "1"]
# the student on the digits: 32x32, C 16, one block per stage
DIGITS = ["--epochs", "1", "--threads", "1", "--workers", "0", "--embed-dim", "16", "--depths", "1", "1",
          "--num-heads", "1", "2"]

# float64, so that the losses match their hand computations to float64's rounding (~1e-15: rel 1e-6 below is far
# above it, and far under the 7% of a reversed KL or the factors of a wrong tau power or reduction). In float32 a
# KL, a small difference of O(1) logs, loses ~100 u of itself: the soft loss was 5.4e-7 from its exact value, too
# close to 1e-6 to hold on every CPU.
S = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.5, -2.0]], dtype=torch.float64)  # (B, C) student logits
T = torch.tensor([[1.0, 0.0, -1.0], [-0.5, 2.5, 0.0]], dtype=torch.float64)  # teacher logits
Y = torch.tensor([0, 2])


def tiny_swin(num_classes: int = 3, img: int = 16, **kw) -> SwinTransformer:
    cfg = SwinConfig(embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4, patch_size=2, img_size=img,
                     num_classes=num_classes, drop_path_rate=0.0, **kw)
    return randomize_(SwinTransformer(cfg))


def hand_ce(logits, y):
    log_p = logits - logits.logsumexp(-1, keepdim=True)
    return -log_p.gather(1, y[:, None]).mean()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 classes (blue, green, red noisy squares) x 8 train / 2 val images, 16x16."""
    return color_folder(tmp_path_factory.mktemp("colors"), 8, 2)


pytestmark = pytest.mark.usefixtures("keep_threads")


def save_run_checkpoint(model: SwinTransformer, path: Path, class_names: list[str]) -> Path:
    """A checkpoint as `swinkit train` writes it (best.pt's keys)."""
    torch.save({"task": "classify", "config": classifier_config(model), "model": model.state_dict(),
                "class_names": class_names, "data": {"img_size": model.cfg.img_size[0], "crop_pct": 1.0}}, path)
    return path


# ---- losses


def test_soft_loss_is_tau_squared_kl_over_batch_times_classes():
    tau = 2.0
    log_q = (S / tau) - (S / tau).logsumexp(-1, keepdim=True)  # student
    log_p = (T / tau) - (T / tau).logsumexp(-1, keepdim=True)  # teacher
    kl = (log_p.exp() * (log_p - log_q)).sum()  # summed over the batch and the classes
    expected = tau**2 * kl / S.numel()  # DeiT divides by B * C
    assert soft_distillation_loss(S, T, tau).item() == pytest.approx(expected.item(), rel=1e-6)
    assert soft_distillation_loss(T, T, tau).item() == pytest.approx(0.0, abs=1e-7)


def test_tau_squared_keeps_the_soft_loss_finite_as_tau_grows():
    """Hinton's high-temperature limit: tau^2 KL -> the squared difference of the centred logits / 2C."""
    s, t = S.double(), T.double()  # fp64: at high tau the KL is a difference of nearly equal numbers
    d = t - s
    limit = ((d - d.mean(-1, keepdim=True)) ** 2).sum() / (2 * s.shape[1]) / s.numel()
    assert soft_distillation_loss(s, t, 1e4).item() == pytest.approx(limit.item(), rel=1e-3)  # error ~ 1 / tau
    assert soft_distillation_loss(s, t, 10.0).item() == pytest.approx(limit.item(), rel=0.1)


def test_hard_loss_and_the_alpha_mix_match_hand_computations():
    cls, dist = S, S.flip(0)
    assert hard_distillation_loss(dist, T).item() == pytest.approx(hand_ce(dist, T.argmax(-1)).item(), rel=1e-6)
    ce = torch.nn.CrossEntropyLoss()
    hard = Distiller("hard", lambda x: T, ce, alpha=0.5)
    expected = 0.5 * hand_ce(cls, Y) + 0.5 * hand_ce(dist, torch.tensor([0, 1]))  # argmax of T
    assert hard(None, (cls, dist), Y).item() == pytest.approx(expected.item(), rel=1e-6)
    # alpha 0: the labels' loss alone; alpha 1: the distillation loss alone
    assert Distiller("soft", lambda x: T, ce, alpha=0.0, tau=3.0)(None, S, Y).item() == \
        pytest.approx(hand_ce(S, Y).item(), rel=1e-6)
    assert Distiller("soft", lambda x: T, ce, alpha=1.0, tau=3.0)(None, S, Y).item() == \
        pytest.approx(soft_distillation_loss(S, T, 3.0).item(), rel=1e-6)
    mixed = Distiller("soft", lambda x: T, ce, alpha=0.3, tau=3.0)(None, S, Y)
    assert mixed.item() == pytest.approx(0.7 * hand_ce(S, Y).item() + 0.3 * soft_distillation_loss(S, T, 3.0).item(),
                                         rel=1e-6)


# ---- the distillation head


def test_the_distillation_head_is_a_second_head_averaged_at_inference_and_folds_into_one():
    model = tiny_swin(5)
    plain_keys = set(model.state_dict())
    add_distillation_head(model)
    randomize_(model)
    x = torch.randn(2, 3, 16, 16)
    assert set(model.state_dict()) - plain_keys == {"head.dist.weight", "head.dist.bias"}
    assert set(SwinTransformer(model.cfg).state_dict()) == plain_keys  # the plain layout is untouched
    feats = model.forward_features(x).mean((1, 2))  # (B, C) pooled
    cls, dist = model.train()(x)  # training: both heads' logits
    torch.testing.assert_close(cls, feats @ model.head.fc.weight.T + model.head.fc.bias, atol=1e-5, rtol=0)
    torch.testing.assert_close(dist, feats @ model.head.dist.weight.T + model.head.dist.bias, atol=1e-5, rtol=0)
    with torch.no_grad():
        averaged = model.eval()(x)
    torch.testing.assert_close(averaged, (cls + dist).detach() / 2, atol=1e-5, rtol=0)
    folded = fold_distillation_head(copy.deepcopy(model))
    assert type(folded.head) is not DistillationHead and set(folded.state_dict()) == plain_keys
    with torch.no_grad():
        torch.testing.assert_close(folded(x), averaged, atol=1e-5, rtol=0)


def test_checkpoints_keep_the_head_and_plain_ones_load_as_before(tmp_path):
    names = ["a", "b", "c"]
    distilled, plain = add_distillation_head(tiny_swin()), tiny_swin()
    randomize_(distilled)
    x = torch.randn(2, 3, 16, 16)
    for model, name in ((distilled, "d.pt"), (plain, "p.pt")):
        path = save_run_checkpoint(model, tmp_path / name, names)
        ck = torch.load(path, weights_only=True)
        assert ck["config"].get(CONFIG_KEY, False) == (model is distilled)
        with torch.no_grad():
            want = model.eval()(x)
            for loaded in (ClassifyTask.load(path, ck).model, load_classifier(path)[0]):  # eval / predict, teacher
                assert isinstance(loaded.head, DistillationHead) == (model is distilled)
                torch.testing.assert_close(loaded(x), want, atol=1e-6, rtol=0)


def parse(*argv: str):
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser, "train", argv=list(argv))
    return train_mod.resolve_settings(parser.parse_args(list(argv)))


def test_pretrained_from_a_distilled_checkpoint_folds_its_heads_unless_distilling_hard(folder, tmp_path):
    distilled = randomize_(add_distillation_head(tiny_swin()))
    path = save_run_checkpoint(distilled, tmp_path / "d.pt", ["blue", "green", "red"])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = distilled.eval()(x)
    flags = ["--data", str(folder), "--pretrained", str(path), "--threads", "1", "--smoothing", "0"]
    for extra, keeps_head in (([], False), (["--teacher", str(path), "--distill", "hard"], True)):
        task = ClassifyTask(parse(*flags, *extra), Env(torch.device("cpu")))
        task.build_datasets()
        model = task.build_model()
        assert isinstance(model.head, DistillationHead) == keeps_head
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), want, atol=1e-5, rtol=0)  # the same distilled model


# ---- the teacher


def test_the_teacher_sees_the_student_input_resized_and_renormalised_without_grad():
    model = tiny_swin(3, img=24)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    teacher = Teacher(model, 24)
    out = teacher(x)
    assert not out.requires_grad and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        want = model.eval()(F.interpolate(x, size=(24, 24), mode="bilinear", antialias=True))
        torch.testing.assert_close(out, want, atol=1e-6, rtol=0)
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])  # the student's
        half = Teacher(model, 16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        raw = x * std[None, :, None, None] + mean[None, :, None, None]
        torch.testing.assert_close(half(x), model((raw - 0.5) / 0.5), atol=1e-5, rtol=0)


# ---- settings and errors


def train_main(folder, out, *extra) -> int:
    return main(["train", "--data", str(folder), "--out", str(out), *TINY, *extra])


def test_setting_errors_say_what_to_do(folder, tmp_path, capsys):
    cases = [
        (["--distill", "soft"], "error: --distill soft needs a teacher: add --teacher CKPT (a checkpoint or run "
                                "directory of a classifier of the same classes) or --teacher ema (the run's own EMA, "
                                "with --ema)"),
        (["--teacher", "ema", "--distill", "hard"], "error: --teacher ema distills from the run's EMA of the "
                                                    "weights, but --ema is off: add --ema, or pass a checkpoint as "
                                                    "--teacher"),
        (["--teacher", "ema"], "error: --teacher ema is given without --distill: add --distill soft or --distill "
                               "hard"),
        (["--teacher", str(tmp_path / "none.pt"), "--distill", "soft"],
         f"error: --teacher {tmp_path / 'none.pt'}: no such file or directory; expected a checkpoint file, a run "
         "directory with best.pt, or ema"),
        (["--teacher", "ema", "--ema", "--distill", "soft", "--distill-alpha", "2"],
         "error: --distill-alpha must be in [0, 1], got 2.0"),
    ]
    for i, (flags, message) in enumerate(cases):
        assert train_main(folder, tmp_path / f"r{i}", *flags) == 1
        assert capsys.readouterr().err.strip() == message


def test_a_teacher_of_other_classes_is_refused(folder, tmp_path, capsys):
    ten = save_run_checkpoint(tiny_swin(10), tmp_path / "ten.pt", [str(i) for i in range(10)])
    assert train_main(folder, tmp_path / "a", "--teacher", str(ten), "--distill", "soft") == 1
    assert capsys.readouterr().err.strip() == (
        f"error: teacher {ten} predicts 10 classes, the student's data has 3: distill from a teacher of the same "
        f"classes (fine-tune it on this data first: swinkit train --data DATA --pretrained {ten})")
    other = save_run_checkpoint(tiny_swin(3), tmp_path / "abc.pt", ["blue", "red", "green"])
    assert train_main(folder, tmp_path / "b", "--teacher", str(other), "--distill", "hard") == 1
    assert capsys.readouterr().err.strip() == (
        f"error: teacher {other} has other classes than the data: class 1 is 'red' for the teacher, 'green' in the "
        "data; distill from a teacher of the same classes in the same order")


def test_self_distillation_uses_the_ema_handed_over_by_the_loop(folder):
    settings = parse("--data", str(folder), *TINY, "--teacher", "ema", "--ema", "--distill", "soft", "--distill-tau",
                     "2", "--distill-alpha", "0.25")
    task = ClassifyTask(settings, Env(torch.device("cpu")))
    task.build_datasets()
    model = task.build_model()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=re.escape("--teacher ema: the training loop did not hand its EMA to the "
                                                   "task (expected a call to ClassifyTask.set_ema")):
        task.loss(model, (x, y))
    ema = randomize_(copy.deepcopy(model)).train()  # the loop's EMA: another set of weights, in training mode
    task.set_ema(ema)
    loss = task.loss(model.train(), (x, y))
    with torch.no_grad():
        s, t = model(x), ema.eval()(x)
    expected = 0.75 * hand_ce(s, y) + 0.25 * soft_distillation_loss(s, t, 2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ---- short runs on the digits


def eval_json(run: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data", str(digits_folder()), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_soft_then_hard_distillation_on_the_digits_write_checkpoints_that_evaluate(tmp_path, capsys):
    # the teacher: a bigger Swin at 48x48 in timm's format, so its input is resized from the student's 32x32
    cfg = SwinConfig(embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=4, img_size=48, num_classes=10,
                     drop_path_rate=0.0)
    timm_file = write_checkpoint(randomize_(SwinTransformer(cfg)).state_dict(), cfg,
                                 tmp_path / "teacher_patch4_window4_48.pth", fmt="timm")
    soft = tmp_path / "soft"
    assert main(["train", "--out", str(soft), *DIGITS, "--teacher", str(timm_file), "--distill", "soft",
                 "--distill-tau", "2"]) == 0
    summary = json.loads((soft / "summary.json").read_text())
    best = torch.load(soft / "best.pt", weights_only=True)
    assert not any(k.startswith("head.dist") for k in best["model"]) and CONFIG_KEY not in best["config"]
    assert eval_json(soft, capsys)["top1"] == pytest.approx(summary["val_top1"], abs=1e-9)

    hard = tmp_path / "hard"  # the soft run's directory as the teacher
    assert main(["train", "--out", str(hard), *DIGITS, "--teacher", str(soft), "--distill", "hard"]) == 0
    summary = json.loads((hard / "summary.json").read_text())
    assert summary["model"].endswith(" + distillation head")
    best = torch.load(hard / "best.pt", weights_only=True)
    assert {"head.dist.weight", "head.dist.bias"} <= set(best["model"]) and best["config"][CONFIG_KEY] is True
    assert eval_json(hard, capsys)["top1"] == pytest.approx(summary["val_top1"], abs=1e-9)  # averaged heads
