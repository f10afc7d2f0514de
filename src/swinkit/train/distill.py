"""Knowledge distillation for the classification task (`swinkit train --teacher CKPT --distill soft|hard`):
the soft (Hinton et al. 2015) and hard-label (DeiT, Touvron et al. 2021) losses, DeiT's distillation head, and the
frozen teacher.

DeiT's distillation token becomes a second linear head here: a Swin has no class token, only pooled features, so
the "distillation token" is a second classifier on the same pooled features (`DistillationHead`, state-dict keys
`head.dist.*` beside the class head's `head.fc.*`; a model without it keeps SwinTransformer's layout). As in DeiT,
training returns both heads' logits and inference their average ("the distilled model").

Both losses follow DeiT's `DistillationLoss` (facebookresearch/deit, losses.py):
    loss = (1 - alpha) * base(student_cls, labels) + alpha * distill(student_dist, teacher)
    soft: distill = tau^2 * KL(softmax(t / tau) || softmax(s / tau)), summed and divided by B * C (DeiT divides by
          the logits' numel, the legacy "mean" of F.kl_div, not by B; deit#61: batchmean gave similar results)
    hard: distill = CE(s, argmax t)
`base` is the task's criterion (label smoothing, Mixup/CutMix soft targets); the teacher sees the mixed images.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import SwinConfig
from ..data import IMAGENET_MEAN, IMAGENET_STD
from ..models.swin import ClassifierHead, SwinTransformer
from ..models.video import VideoSwinTransformer

DISTILL_KINDS = ("soft", "hard")
CONFIG_KEY = "distillation_head"  # in a checkpoint's "config": True when the model has a distillation head


# ----------------------------------------------------------------------------------------------------------
# losses


def soft_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)) for (B, C) logits, summed over the batch and
    classes and divided by B * C (DeiT's reduction)."""
    s = F.log_softmax(_at_least_fp32(student) / tau, dim=-1)
    t = F.log_softmax(_at_least_fp32(teacher) / tau, dim=-1)
    return F.kl_div(s, t, reduction="sum", log_target=True) * tau**2 / student.numel()


def hard_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, C) student logits against the teacher's top class (DeiT's hard-label distillation)."""
    return F.cross_entropy(_at_least_fp32(student), teacher.argmax(dim=-1))


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 logits (autocast) -> fp32; fp32 and fp64 as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class Distiller:
    """The distillation objective: (1 - alpha) * base(cls, targets) + alpha * distill(dist, teacher(x)).

    `outputs` is the student's (cls, dist) pair in training when it has a distillation head, else one (B, C) tensor
    that plays both parts. `teacher`: (B, 3, H, W) images -> (B, C) logits, without grad."""

    def __init__(self, kind: str, teacher, base: nn.Module, alpha: float = 0.5, tau: float = 1.0):
        if kind not in DISTILL_KINDS:
            raise ValueError(f"distillation must be one of {DISTILL_KINDS}, got {kind!r}")
        self.kind, self.teacher, self.base, self.alpha, self.tau = kind, teacher, base, alpha, tau

    def __call__(self, x: torch.Tensor, outputs, targets: torch.Tensor) -> torch.Tensor:
        cls, dist = outputs if isinstance(outputs, (tuple, list)) else (outputs, outputs)
        t = self.teacher(x)  # (B, C)
        kd = soft_distillation_loss(dist, t, self.tau) if self.kind == "soft" else hard_distillation_loss(dist, t)
        return (1 - self.alpha) * self.base(cls, targets) + self.alpha * kd


# ----------------------------------------------------------------------------------------------------------
# the distillation head


class DistillationHead(ClassifierHead):
    """A classifier head with a second linear classifier `dist` on the same pooled features (DeiT's distillation
    token, as a head). Training: (class logits, distillation logits), each (B, num_classes); eval: their average."""

    def __init__(self, dim: int, num_classes: int, drop: float):
        super().__init__(dim, num_classes, drop)
        self.dist = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False):
        x = super().forward(x, pre_logits=True)  # (B, dim)
        if pre_logits:
            return x
        cls, dist = self.fc(x), self.dist(x)
        return (cls, dist) if self.training else (cls + dist) / 2


def has_distillation_head(model: nn.Module) -> bool:
    return isinstance(getattr(model, "head", None), DistillationHead)


def add_distillation_head(model: SwinTransformer) -> SwinTransformer:
    """Give `model` (in place) a freshly initialised distillation head beside its class head, which it keeps."""
    if has_distillation_head(model):
        return model
    if model.num_classes <= 0:
        raise ValueError("a distillation head needs a classifier: the model has no head (num_classes 0); "
                         "give it one with reset_classifier(n) first")
    old = model.head
    head = DistillationHead(model.num_features, model.num_classes, old.drop.p).to(old.fc.weight)
    SwinTransformer._init_weights(head.dist)
    head.fc = old.fc
    model.head = head.train(model.training)
    return model


@torch.no_grad()
def fold_distillation_head(model: SwinTransformer) -> SwinTransformer:
    """The distilled model as a plain SwinTransformer (in place): the two heads are linear on the same features, so
    their averaged logits are one linear head with the averaged weights and biases."""
    if not has_distillation_head(model):
        return model
    old = model.head
    head = ClassifierHead(model.num_features, model.num_classes, old.drop.p).to(old.fc.weight)
    head.fc.weight.copy_((old.fc.weight + old.dist.weight) / 2)
    head.fc.bias.copy_((old.fc.bias + old.dist.bias) / 2)
    model.head = head.train(model.training)
    return model


def classifier_config(model: SwinTransformer) -> dict:
    """A checkpoint's "config": the SwinConfig, plus CONFIG_KEY when the model has a distillation head."""
    return {**model.cfg.to_dict(), **({CONFIG_KEY: True} if has_distillation_head(model) else {})}


def classifier_from_config(config: dict) -> SwinTransformer:
    """The inverse of classifier_config (the weights are the caller's to load)."""
    model = SwinTransformer(SwinConfig.from_dict(config))
    return add_distillation_head(model) if config.get(CONFIG_KEY) else model


# ----------------------------------------------------------------------------------------------------------
# the teacher


def load_classifier(path: str | Path) -> tuple[SwinTransformer, dict]:
    """(model in eval mode on CPU, {"class_names": list | None, "data": the eval transform or {}}) from a run
    directory (its best.pt), a swinkit classification checkpoint (with or without a distillation head) or any file
    `swinkit.load_model` reads (official, timm, torchvision, Hugging Face, ...)."""
    from ..io.load import load_model

    path = Path(path)
    if path.is_dir() and (path / "best.pt").is_file():
        path = path / "best.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory; expected a checkpoint file or a run directory "
                                "with best.pt")
    ck = None
    if path.is_file() and path.suffix in (".pt", ".pth"):
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - not a swinkit checkpoint: load_model reads it or says what is wrong
            ck = None
        ck = ck if isinstance(ck, dict) and isinstance(ck.get("config"), dict) and "model" in ck else None
    if ck is not None and ck["config"].get(CONFIG_KEY):  # load_model knows no distillation head
        model = classifier_from_config(ck["config"])
        model.load_state_dict(ck["model"])
        return model.eval(), {"class_names": ck.get("class_names"), "data": ck.get("data") or {}}
    model = load_model(path)
    return model.eval(), {"class_names": getattr(model, "class_names", None),
                          "data": (ck or {}).get("data") or {}}


class Teacher:
    """A frozen classifier, run in eval mode without grad on the student's input: resized to the teacher's own
    input size and renormalised to its mean / std where those differ from the student's."""

    def __init__(self, model: nn.Module, img_size: int | tuple[int, int] | None = None,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, student_mean=IMAGENET_MEAN, student_std=IMAGENET_STD):
        self.model = model.requires_grad_(False)
        self.size = None if img_size is None else tuple(img_size) if isinstance(img_size, (list, tuple)) \
            else (img_size, img_size)
        same = list(mean) == list(student_mean) and list(std) == list(student_std)
        # x_teacher = (x * std_s + mean_s - mean_t) / std_t = x * scale + shift, per channel
        self.affine = None if same else (torch.tensor(student_std) / torch.tensor(std),
                                         (torch.tensor(student_mean) - torch.tensor(mean)) / torch.tensor(std))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) student input -> (B, C) float logits."""
        self.model.eval()  # the loop's EMA may have been put back into training mode
        if self.affine is not None:
            scale, shift = (t.to(x.device, x.dtype)[None, :, None, None] for t in self.affine)
            x = x * scale + shift
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return self.model(x).float()

    @classmethod
    def from_checkpoint(cls, path: str | Path, class_names: list[str], device: torch.device) -> "Teacher":
        """The teacher in `path` for a student of `class_names`; a ValueError when it predicts other classes."""
        model, meta = load_classifier(path)
        if not isinstance(model, SwinTransformer) or isinstance(model, VideoSwinTransformer):
            raise ValueError(f"teacher {path} holds a {type(model).__name__}, expected an image classifier (a Swin "
                             "checkpoint of the classify task or another library's Swin classifier)")
        n = len(class_names)
        if model.num_classes != n:
            raise ValueError(f"teacher {path} predicts {model.num_classes} classes, the student's data has {n}: "
                             f"distill from a teacher of the same classes (fine-tune it on this data first: swinkit "
                             f"train --data DATA --pretrained {path})")
        names = meta["class_names"]
        if names and list(names) != list(class_names):
            diff = next(i for i, (a, b) in enumerate(zip(names, class_names)) if a != b)
            raise ValueError(f"teacher {path} has other classes than the data: class {diff} is {names[diff]!r} "
                             f"for the teacher, {class_names[diff]!r} in the data; distill from a teacher of the "
                             "same classes in the same order")
        data = meta["data"]
        size = data.get("img_size") or model.cfg.img_size
        return cls(model.to(device), size, data.get("mean", IMAGENET_MEAN), data.get("std", IMAGENET_STD))


def check_settings(teacher: str | None, distill: str | None, tau: float, alpha: float, ema: bool) -> None:
    """ValueErrors for distillation settings that cannot work, each saying what to change."""
    if distill is not None and teacher is None:
        raise ValueError(f"--distill {distill} needs a teacher: add --teacher CKPT (a checkpoint or run directory of "
                         "a classifier of the same classes) or --teacher ema (the run's own EMA, with --ema)")
    if teacher is not None and distill is None:
        raise ValueError(f"--teacher {teacher} is given without --distill: add --distill soft or --distill hard")
    if teacher == "ema" and not ema:
        raise ValueError("--teacher ema distills from the run's EMA of the weights, but --ema is off: add --ema, "
                         "or pass a checkpoint as --teacher")
    if teacher not in (None, "ema") and not Path(teacher).exists():
        raise ValueError(f"--teacher {teacher}: no such file or directory; expected a checkpoint file, a run "
                         "directory with best.pt, or ema")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"--distill-tau must be > 0, got {tau}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"--distill-alpha must be in [0, 1], got {alpha}")
