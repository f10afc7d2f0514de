"""The embedded motion task (`swinkit train --task video` with no --data: scikit-learn's digits moving in one of 8
directions over 8 frames) with 3-D windows, beside the same model with temporal patch and window 1 (no token
sees another frame): the proof that the 3-D windows carry the motion.

    .venv/bin/python benchmarks/video_digits.py            # trains both (about 5 minutes on 2 cores)
    .venv/bin/python benchmarks/video_digits.py --reuse    # only re-tabulate existing runs

Runs go to benchmarks/runs/video_digits{,_static}; the table goes to benchmarks/video_digits.{csv,md}.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = {"digits": "video_digits", "digits-static": "video_digits_static"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse", action="store_true", help="tabulate the existing runs instead of training")
    args = parser.parse_args()
    from swinkit.tools import bench

    rows = []
    for recipe, name in RUNS.items():
        out = HERE / "runs" / name
        cmd = [sys.executable, "-m", "swinkit", "train", "--task", "video", "--recipe", recipe, "--out", str(out)]
        if not args.reuse:
            subprocess.run(cmd, check=True)
        s = json.loads((out / "summary.json").read_text())
        rows.append(dict(recipe=recipe, model=s["model"], params=s["params"], epochs=s["epochs"],
                         train_s=round(s["train_seconds"]), wall_s=round(s["wall_seconds"]),
                         val_top1=round(s["val_top1"], 2), best_val_top1=round(s["best_val_top1"], 2),
                         command="swinkit train --task video" + ("" if recipe == "digits" else f" --recipe {recipe}")))
    bench.write_csv(rows, HERE / "video_digits.csv", list(rows[0]))
    lines = ["| command | model | params | epochs | training | val top-1 |", "|---|---|---|---|---|---|"]
    lines += [f"| `{r['command']}` | {r['model']} | {r['params']} | {r['epochs']} | {r['train_s']} s | "
              f"{r['val_top1']:.2f}% |" for r in rows]
    (HERE / "video_digits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
