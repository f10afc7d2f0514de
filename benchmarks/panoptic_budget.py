"""Mask2Former on a swinkit Swin from scratch at a fixed CPU training budget, through the commands a user types:
COCO128 converted to COCO panoptic (`swinkit data coco128-panoptic`) with PQ on its train and val images, and CamVid
in --semantic mode against swinkit's UPerNet `camvid` recipe at the same budget.

    .venv/bin/python benchmarks/panoptic_budget.py --minutes 20                 # coco128, camvid, upernet
    .venv/bin/python benchmarks/panoptic_budget.py --runs coco128 --minutes 5

Each run first trains one short epoch to time it, then chooses the number of epochs that fills `--minutes` of training
(validation, run each epoch, is not counted), trains with the recipe's schedule over them, and evaluates the best
weights with `swinkit eval`. Prints one row per run and writes benchmarks/panoptic_budget.csv and .md; the runs, and
each finished run's row (reused by later invocations), stay in benchmarks/runs/panoptic_budget/.
"""
import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
RUNS = HERE / "runs" / "panoptic_budget"
SWINKIT = [sys.executable, "-m", "swinkit"]
# name -> (train flags, images per epoch without --repeat, eval splits: (flag list, label))
PANOPTIC = RUNS / "coco128_panoptic"
REPEAT = 10  # COCO128's 100 images ten times an epoch: one validation per 1,000 images
SETUPS = {
    "coco128": (["--task", "panoptic", "--recipe", "cpu", "--data", str(PANOPTIC), "--repeat", str(REPEAT),
                 "--val-images", "20"], 100 * REPEAT,
                [(["--data", str(PANOPTIC), "--split", "train2017"], "train"),
                 (["--data", str(PANOPTIC), "--split", "val2017"], "val")]),
    "camvid": (["--task", "panoptic", "--semantic", "--recipe", "cpu", "--data", str(DATA / "camvid"),
                "--crop-size", "256", "320", "--repeat", "1", "--val-images", "50"], 367,
               [(["--data", str(DATA / "camvid")], "val")]),
    "upernet": (["--task", "segment", "--recipe", "camvid", "--data", str(DATA / "camvid")], 367,
                [(["--data", str(DATA / "camvid")], "val")]),
}


def swinkit(*args: str) -> str:
    proc = subprocess.run([*SWINKIT, *args], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"swinkit {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def run(name: str, minutes: float) -> dict:
    done = RUNS / f"{name}_{minutes:g}min_row.json"  # a finished run's row: kept, so runs can be added later
    if done.exists():
        return json.loads(done.read_text())
    flags, per_epoch, evals = SETUPS[name]
    probe = RUNS / f"{name}_probe"
    if not (probe / "summary.json").exists():
        quick = ["--val-images", "1"] if "panoptic" in flags else []
        swinkit("train", *flags, "--epochs", "1", "--out", str(probe), *quick)
    ips = json.loads((probe / "summary.json").read_text())["images_per_sec"]
    epochs = max(1, round(minutes * 60 * ips / per_epoch))
    out = RUNS / f"{name}_{minutes:g}min"
    command = ["train", *flags, "--epochs", str(epochs), "--out", str(out)]
    print(f"{name}: {ips:.2f} img/s -> {epochs} epochs: swinkit {' '.join(command)}", flush=True)
    if not (out / "summary.json").exists():
        swinkit(*command)
    summary = json.loads((out / "summary.json").read_text())
    row = {"run": name, "model": summary["model"], "epochs": epochs,
           "train_minutes": round(summary["train_seconds"] / 60, 1), "command": "swinkit " + " ".join(command)}
    for eval_flags, label in evals:
        result = json.loads(swinkit("eval", "--checkpoint", str(out), *eval_flags, "--json").strip().splitlines()[-1])
        keys = ("pq", "sq", "rq", "pq_th", "pq_st") if "pq" in result else ("miou", "pixel_acc")
        row.update({f"{label}_{k}": round(result[k], 4) if result[k] is not None else None for k in keys})
        if "per_class_iou" in result:
            row.update({f"{label}_iou_{c}": None if v is None else round(v, 3)
                        for c, v in result["per_class_iou"].items()})
    print(json.dumps(row), flush=True)
    done.write_text(json.dumps(row))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--minutes", type=float, default=20.0, help="training budget of each run")
    args = p.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    if "coco128" in args.runs and not PANOPTIC.exists():
        print(swinkit("data", "coco128-panoptic", str(DATA / "coco128"), str(PANOPTIC)))
    from swinkit.utils.cpu import describe

    rows = [run(name, args.minutes) for name in args.runs]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(HERE / "panoptic_budget.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    shown = [k for k in fields if k != "command" and "_iou_" not in k]
    lines = [f"{describe()}, training budget {args.minutes:g} minutes per run", "",
             "| " + " | ".join(shown) + " |", "|" + " --- |" * len(shown)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in shown) + " |" for r in rows]
    lines += ["", *[f"- {r['run']}: `{r['command']}`" for r in rows]]
    (HERE / "panoptic_budget.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
