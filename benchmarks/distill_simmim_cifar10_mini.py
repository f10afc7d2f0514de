"""Distillation and SimMIM pre-training on cifar10-mini with the commands a user types (issue 17).

    .venv/bin/python benchmarks/distill_simmim_cifar10_mini.py [--runs student teacher distill pretrain finetune]

Runs (each `swinkit train` under torchrun with 2 processes in float32 (this host has no AVX-512 BF16), skipped when its summary.json exists):
- student: `--recipe small --epochs 30` (Swin, C 64, depths 2-2, 0.54M parameters; half the recipe's 60 epochs, to
  fit this 2-core host's hour); the baseline of both studies;
- teacher_wide: the same recipe 1.5x wider (C 96, heads 3-6, 1.2M parameters), 30 epochs: no better than the
  student (55.4% against 55.5% top-1), so it teaches nothing;
- teacher: the student's recipe at its full 60 epochs (the teacher used);
- distill: the student's command plus `--teacher teacher/best.pt --distill soft` (equal student budget: same
  epochs, data and schedule);
- pretrain: SimMIM (`--task pretrain`) with the student's encoder on the unlabelled photographs here (cifar10-mini
  train without labels, CamVid train images, COCO128 images), 8-px mask blocks (the paper's 32 px of a 192-px
  input, scaled to 32 px inputs and rounded to whole patches), then
- finetune: the student's command with `--pretrained pretrain/best.pt --layer-decay 0.9` and fewer epochs, so that
  pre-training plus fine-tuning takes about the student's training time (compare the measured minutes).

Writes benchmarks/distill_simmim_cifar10_mini.csv and .md (val top-1 / top-5, training minutes, load).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
DATA = SHARED / "cifar10-mini"
RUNS_DIR = HERE / "runs"
CSV, MD = HERE / "distill_simmim_cifar10_mini.csv", HERE / "distill_simmim_cifar10_mini.md"
LAUNCH = [str(ROOT / ".venv" / "bin" / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "swinkit", "train"]
STUDENT = ["--data", DATA, "--recipe", "small", "--epochs", "30"]
ARCH = ["--img-size", "32", "--patch-size", "4", "--window-size", "4", "--embed-dim", "64", "--depths", "2", "2",
        "--num-heads", "2", "4"]
PRETRAIN_EPOCHS, FINETUNE_EPOCHS = 10, 20


def pretrain_folder() -> Path:
    """A folder of the unlabelled photographs, hard links (copies across file systems; the pretrain task's
    recursive search does not follow symlinked folders): cifar10-mini train, CamVid train images, COCO128 images."""
    folder = RUNS_DIR / "simmim_images"
    for name, src in {"cifar10-mini": DATA / "train", "camvid": SHARED / "camvid" / "train" / "images",
                      "coco128": SHARED / "coco128" / "images"}.items():
        if not (folder / name).exists():
            shutil.copytree(src, folder / f".{name}", copy_function=link_or_copy)
            (folder / f".{name}").rename(folder / name)
    return folder


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def commands() -> dict[str, tuple[list, str]]:
    """name -> (swinkit train arguments, what the run is)."""
    run = {n: RUNS_DIR / f"c10_{n}" for n in ("student", "distill", "pretrain", "finetune")}
    run["teacher_wide"], run["teacher"] = RUNS_DIR / "c10_teacher", RUNS_DIR / "c10_teacher60"
    return {
        "student": ([*STUDENT, "--out", run["student"]], "no teacher, from scratch (recipe small, 30 epochs)"),
        "teacher_wide": ([*STUDENT, "--embed-dim", "96", "--num-heads", "3", "6", "--out", run["teacher_wide"]],
                         "recipe small 1.5x wider, 30 epochs (not used: no better than the student)"),
        "teacher": ([*STUDENT[:-2], "--out", run["teacher"]], "teacher: recipe small, its full 60 epochs"),
        "distill": ([*STUDENT, "--teacher", run["teacher"] / "best.pt", "--distill", "soft", "--out", run["distill"]],
                    "student + soft distillation from the teacher (same epochs)"),
        "pretrain": (["--task", "pretrain", "--data", pretrain_folder(), "--recipe", "small", *ARCH,
                      "--mask-patch-size", "8", "--epochs", str(PRETRAIN_EPOCHS),
                      "--out", run["pretrain"]], "SimMIM on cifar10-mini train + CamVid + COCO128 images, no labels"),
        "finetune": ([*STUDENT[:-1], str(FINETUNE_EPOCHS), "--pretrained", run["pretrain"] / "best.pt",
                      "--layer-decay", "0.9", "--out", run["finetune"]],
                     f"student fine-tuned from the SimMIM run ({FINETUNE_EPOCHS} epochs)"),
    }


def shown(args: list) -> str:
    return shlex.join(["swinkit", "train", *(os.path.relpath(a, ROOT) if isinstance(a, Path) else a for a in args)])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=list(commands()), choices=list(commands()))
    args = p.parse_args()
    if not (DATA / "train").is_dir():
        print(f"no cifar10-mini at {DATA}")
        return 1
    cmds, rows = commands(), []
    old = {r["run"]: r for r in csv.DictReader(open(CSV))} if CSV.exists() else {}
    for name in args.runs:
        argv, what = cmds[name]
        out = Path(argv[argv.index("--out") + 1])
        before = os.getloadavg()[0]
        if (out / "summary.json").exists() and name in old:
            continue  # measured before: its row (and the load while it ran) stays
        if not (out / "summary.json").exists():
            print(f"== {name}: {shown(argv)}", flush=True)
            subprocess.run([*LAUNCH, *map(str, argv)], check=True)
        s = json.loads((out / "summary.json").read_text())
        top1 = f"{s['val_top1']:.2f}" if "val_top1" in s else ""
        rows.append({"run": name, "what": what, "val_top1": top1, "val_top5": f"{s.get('val_top5', 0):.2f}" if top1
                     else "", "val_psnr": f"{s['val_masked_psnr']:.2f}" if "val_masked_psnr" in s else "",
                     "params_m": f"{s['params'] / 1e6:.2f}", "epochs": s["epochs"],
                     "train_minutes": f"{s['train_seconds'] / 60:.1f}", "load": f"{before:.1f}/{os.getloadavg()[0]:.1f}",
                     "command": shown(argv)})
        print(rows[-1], flush=True)
    old.update({r["run"]: r for r in rows})
    rows = [old[n] for n in cmds if n in old]
    with open(CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"# Distillation and SimMIM on cifar10-mini ({time.strftime('%Y-%m-%d')}, 2 processes x 1 thread, fp32)",
             "", "| run | what | val top-1 | val top-5 | SimMIM val PSNR | params | epochs | train min | load | "
             "command |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['what']} | {r['val_top1']} | {r['val_top5']} | {r['val_psnr']} | {r['params_m']}M | "
              f"{r['epochs']} | {r['train_minutes']} | {r['load']} | `{r['command']}` |" for r in rows]
    MD.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
