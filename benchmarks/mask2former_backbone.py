"""Mask2Former Swin-T inference at 512x512, batch 1: transformers' Mask2FormerForUniversalSegmentation with its own
Swin backbone against the same model with swinkit's backbone (swinkit.interop.hf), holding the same weights, in one
run. Only the backbone differs; the pixel decoder and transformer decoder are transformers' in both.

Both models are built from one random initialisation (seed 0) of transformers' model (Mask2Former's COCO panoptic
head, 133 classes, Swin-T: C 96, depths 2-2-6-2, window 7), which swinkit's converter (io/formats/hfbackbone.py)
reads; the script first checks that the two give the same class and mask logits. Every timing runs in a fresh
process (clean peak RSS); the models alternate repeat by repeat.

    .venv/bin/python benchmarks/mask2former_backbone.py                # 5 repeats x 3 images, 2 threads
    .venv/bin/python benchmarks/mask2former_backbone.py --size 1024    # another size

Prints the table and writes benchmarks/mask2former_backbone.csv and .png. peak_mb: the peak RSS of the timed calls
above what model and input hold.
"""
import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODELS = ("transformers", "swinkit")


def build(which: str):
    """transformers' Mask2Former Swin-T (seed 0), or the same weights with swinkit's backbone."""
    import transformers

    from swinkit.io.formats.hfbackbone import build_hf_model, import_hf_model

    torch.manual_seed(0)
    swin = transformers.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                   drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3", "stage4"])
    model = transformers.Mask2FormerForUniversalSegmentation(
        transformers.Mask2FormerConfig(backbone_config=swin, num_labels=133)).eval()
    if which == "transformers":
        return model
    config, sd, _ = import_hf_model(model.state_dict(), model.config.to_dict(), "transformers' Mask2Former")
    return build_hf_model(transformers.Mask2FormerForUniversalSegmentation, config, sd, "converted")


def worker(spec: dict) -> dict:
    from swinkit.tools import bench

    torch.set_num_threads(spec["threads"])
    model = build(spec["model"])
    x = torch.randn(1, 3, spec["size"], spec["size"], generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        model(pixel_values=x)  # warm-up
        base = bench._memory("cpu")
        bench._reset_peak("cpu")
        times = []
        for _ in range(spec["iters"]):
            t0 = time.perf_counter()
            model(pixel_values=x)
            times.append(time.perf_counter() - t0)
        peak = max(bench._peak("cpu") - base, 0)
    return {"model": spec["model"], "seconds": statistics.median(times), "peak_mb": peak / 2**20}


def check_parity(size: int) -> float:
    """max |class logits difference| + mask logits, as a share of their scale, swinkit vs transformers."""
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = build("transformers")(pixel_values=x), build("swinkit")(pixel_values=x)
    return max(((q - p).abs().max() / p.abs().max()).item()
               for p, q in ((a.class_queries_logits, b.class_queries_logits),
                            (a.masks_queries_logits, b.masks_queries_logits)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker")
    args = p.parse_args()
    from swinkit.tools import bench

    if args.worker:
        print(bench.RESULT_TAG + json.dumps(worker(json.loads(args.worker))))
        return
    from swinkit.utils.cpu import describe

    err = check_parity(args.size)
    print(f"{describe()}; torch {torch.__version__}; {args.size}x{args.size}, batch 1, {args.threads} threads")
    print(f"parity: class / mask logits of the two differ by at most {err:.1e} of their scale")
    runs = []
    for r in range(args.repeats):
        for name in MODELS if r % 2 == 0 else MODELS[::-1]:
            out = bench.run_worker(__file__, dict(model=name, size=args.size, iters=args.iters,
                                                  threads=args.threads))
            if "error" in out:
                sys.exit(f"{name}: {out['error']}")
            runs.append(out)
            print(f"  repeat {r}: {name:<12} {out['seconds']:.3f} s  peak {out['peak_mb']:.0f} MB", flush=True)
    rows = []
    for name in MODELS:
        mine = [r for r in runs if r["model"] == name]
        rows.append(dict(model=f"Mask2Former Swin-T, {name} backbone", size=args.size, threads=args.threads,
                         seconds=statistics.median(r["seconds"] for r in mine),
                         peak_mb=statistics.median(r["peak_mb"] for r in mine), repeats=len(mine)))
    ref = rows[0]
    for row in rows:
        row["speedup_vs_transformers"] = ref["seconds"] / row["seconds"]
        row["memory_vs_transformers"] = row["peak_mb"] / ref["peak_mb"]
        row["cpu"] = describe()
    print("\n| model | s / image | peak MB | speed vs transformers | memory vs transformers |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['seconds']:.3f} | {row['peak_mb']:.0f} | {row['speedup_vs_transformers']:.2f}x "
              f"| {row['memory_vs_transformers']:.2f}x |")
    stem = HERE / f"mask2former_backbone{'' if args.size == 512 else f'_{args.size}'}"
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, key, what in ((axes[0], "seconds", "seconds / image"), (axes[1], "peak_mb", "peak MB")):
        ax.bar(MODELS, [r[key] for r in rows], color=["#999999", "#1f77b4"])
        ax.set_title(what, fontsize=10)
    fig.suptitle(f"Mask2Former Swin-T, {args.size}x{args.size}, batch 1, {args.threads} threads: {describe()}",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=100)
    print(f"wrote {stem.with_suffix('.csv')} and .png")


if __name__ == "__main__":
    main()
