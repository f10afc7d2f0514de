"""CamVid from scratch on this CPU at a fixed training-time budget: swinkit's `camvid` recipe (UPerNet on a narrow
Swin) through the command line a user types, segmentation_models_pytorch's U-Net with a ResNet-18 encoder (the
library a user would reach for instead) on the same data, transforms, optimiser and schedule, and the three
swinkit heads (UPerNet, semantic FPN, Swin-UNet) at equal budget.

    .venv/bin/python benchmarks/segment_camvid.py --runs upernet smp --minutes 20
    .venv/bin/python benchmarks/segment_camvid.py --runs upernet fpn unet --minutes 6 --tag heads

Each run first times a few training steps of its model to choose the epoch count that fills `--minutes` of
training (validation, run each epoch, is not counted), then trains for that many epochs. Prints one row per run
(val mIoU, pixel accuracy, per-class IoU of the last epoch, training minutes) and writes
benchmarks/segment_camvid_<tag>.csv and .md.
"""
import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from swinkit.tasks import segment as S
from swinkit.tools import bench

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "camvid"
RECIPE = S.RECIPES["camvid"]
SWIN_ARCH = dict(embed_dim=RECIPE["embed_dim"], depths=RECIPE["depths"], num_heads=RECIPE["num_heads"],
                 window_size=RECIPE["window_size"][0])
RUNS = {  # name -> swinkit --model (None: segmentation_models_pytorch)
    "upernet": "upernet_swin_t", "fpn": "fpn_swin_t", "unet": "swin_unet_tiny", "smp": None,
}


def datasets():
    names, palette, ignore = S.resolve_labels(DATA)
    crop = tuple(RECIPE["crop_size"])
    train = S.SegmentationFolder(DATA / "train", len(names), ignore,
                                 S.train_transform(crop, ignore, RECIPE["scale"], 0.5, 0.4))
    val = S.SegmentationFolder(DATA / "val", len(names), ignore, S.eval_transform())
    return train, val, names, ignore


def seconds_per_image(model: torch.nn.Module, loss_fn, train, steps: int = 4) -> float:
    """Median seconds per training image of forward + backward + AdamW on real batches (after one warm-up)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(train, RECIPE["batch_size"], shuffle=True, collate_fn=S.collate)
    times = []
    for i, (x, y) in zip(range(steps + 1), loader):
        t0 = time.perf_counter()
        loss_fn(model, x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append((time.perf_counter() - t0) / len(x))
    return sorted(times)[len(times) // 2]


def epochs_for(minutes: float, s_per_img: float, n_train: int) -> int:
    return max(1, math.floor(minutes * 60 / (s_per_img * n_train)))


def run_swinkit(name: str, minutes: float, out: Path, train) -> dict:
    """`swinkit train --task segment --recipe camvid --model M --epochs E`, E chosen from a timing of M."""
    import swinkit
    from swinkit.models.unet import SwinUNet

    model_name = RUNS[name]
    extra = {} if name == "unet" else {"channels": RECIPE["head_channels"]}
    if name == "unet":
        model = SwinUNet(swinkit.SwinUNetConfig.from_name(model_name, num_classes=11, **SWIN_ARCH))
    else:
        model = swinkit.create_segmentation_model(model_name, num_classes=11, **SWIN_ARCH, **extra)
    ce = lambda m, x, y: torch.nn.functional.cross_entropy(m(x), y, ignore_index=11)  # noqa: E731
    spi = seconds_per_image(model.train(), ce, train)
    epochs = epochs_for(minutes, spi * 1.1, len(train))  # aux head, clipping and the loader cost about 10 % more
    cmd = [sys.executable, "-m", "swinkit", "train", "--task", "segment", "--data", str(DATA), "--recipe", "camvid",
           "--model", model_name, "--epochs", str(epochs), "--out", str(out)]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    summary = json.loads((out / "summary.json").read_text())
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    last = rows[-1]
    per_class = {k[8:]: float(v) for k, v in last.items() if k.startswith("val_iou_")}
    return dict(run=name, model=model_name, epochs=epochs, train_minutes=round(summary["train_seconds"] / 60, 1),
                miou=float(last["val_miou"]), pixel_acc=float(last["val_pixel_acc"]), **per_class)


def run_smp(minutes: float, train, val, names, ignore, class_weight: bool) -> dict:
    """segmentation_models_pytorch U-Net (ResNet-18 encoder, random init) with the recipe's batch, AdamW, lr,
    weight decay, warmup + cosine and clipping (and, with class_weight, its median-frequency loss weights), on
    the same datasets; validated once at the end."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=len(names))
    weights = S.median_frequency_weights([lab for _, lab in train.samples], len(names), ignore) \
        if class_weight else None

    def loss_fn(m, x, y):
        # the U-Net needs sides divisible by 32: pad the batch (ignored pixels), crop the logits back
        H, W = x.shape[-2:]
        ph, pw = -H % 32, -W % 32
        logits = m(torch.nn.functional.pad(x, (0, pw, 0, ph)))[..., :H, :W]
        return torch.nn.functional.cross_entropy(logits, y, weights, ignore_index=ignore)

    spi = seconds_per_image(model.train(), loss_fn, train)
    epochs = epochs_for(minutes, spi * 1.05, len(train))
    loader = torch.utils.data.DataLoader(train, RECIPE["batch_size"], shuffle=True, collate_fn=S.collate,
                                         drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    total = epochs * len(loader)
    warm = len(loader) * RECIPE["warmup_epochs"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    train_s = 0.0
    model.train()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for x, y in loader:
            loss_fn(model, x, y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE["clip_grad"])
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        train_s += time.perf_counter() - t0
        print(f"smp epoch {epoch + 1}/{epochs}: {train_s / 60:.1f} min", flush=True)

    class Padded(torch.nn.Module):  # whole-image evaluation of a U-Net that needs sides divisible by 32
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            H, W = x.shape[-2:]
            return self.m(torch.nn.functional.pad(x, (0, -W % 32, 0, -H % 32)))[..., :H, :W]

    val_loader = torch.utils.data.DataLoader(val, 4, collate_fn=S.collate)
    m = S.evaluate(Padded(model).eval(), val_loader, len(names), ignore, torch.device("cpu"))
    s = S.segmentation_metrics(m["confusion"], names)
    return dict(run="smp", model="smp.Unet(resnet18), random init" + (", median-freq weights" if weights is not None
                                                                       else ", unweighted CE"), epochs=epochs, train_minutes=round(train_s / 60, 1),
                miou=s["miou"], pixel_acc=s["pixel_acc"], **{k: v for k, v in s["per_class_iou"].items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=["upernet", "smp"])
    parser.add_argument("--minutes", type=float, default=20.0, help="training-time budget of each run")
    parser.add_argument("--tag", default="budget")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smp-class-weight", action=argparse.BooleanOptionalAction, default=True,
                        help="give the smp U-Net the camvid recipe's median-frequency loss weights too")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark needs ../shared/data/camvid")
    torch.set_num_threads(args.threads)
    train, val, names, ignore = datasets()
    rows = []
    for name in args.runs:
        out = HERE / "runs" / f"camvid_{args.tag}_{name}"
        row = run_smp(args.minutes, train, val, names, ignore, args.smp_class_weight) if name == "smp" else \
            run_swinkit(name, args.minutes, out, train)
        rows.append(row)
        print(json.dumps(row), flush=True)
    fields = ["run", "model", "epochs", "train_minutes", "miou", "pixel_acc", *names]
    path = HERE / f"segment_camvid_{args.tag}"
    bench.write_csv(rows, path.with_suffix(".csv"), fields)  # atomic, like every swinkit CSV
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(fields) + " |", "|" + " --- |" * len(fields)]
    lines += ["| " + " | ".join(fmt(r.get(k, "-")) for k in fields) + " |" for r in rows]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
