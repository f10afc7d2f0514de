"""Video Swin-T inference, swinkit against torchvision's swin3d_t with the same weights: time and peak memory on
1x3x16x224x224, and both on a long 1x3x64x224x224 clip. Every measurement runs in a fresh process (clean peak
RSS); the libraries alternate repeat by repeat.

    .venv/bin/python benchmarks/video_speed.py                  # 3 repeats, 2 threads
    .venv/bin/python benchmarks/video_speed.py --repeats 5 --frames 16 64

Prints the table and writes benchmarks/video_speed.csv. peak_mb is the process's peak RSS over the timed calls above
its RSS after one warm-up call (what `swinkit bench` reports); first_call_peak_mb the peak of that first call above
the RSS once model and input are built (it includes building swinkit's cached masks and biases). swinkit loads
torchvision's state dict through swinkit.load_model, so both run the same weights (random, seeded).
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def worker(spec: dict) -> None:
    from swinkit.tools import bench

    torch.set_num_threads(spec["threads"])
    if spec["lib"] == "swinkit":
        import swinkit

        model = swinkit.load_model(spec["weights"]).eval()
    else:
        from torchvision.models.video import swin3d_t

        model = swin3d_t()
        model.load_state_dict(torch.load(spec["weights"], weights_only=True))
        model.eval()
    torch.manual_seed(1)
    x = torch.randn(1, 3, spec["frames"], 224, 224)
    with torch.inference_mode():
        base = bench._rss()
        bench._reset_peak("cpu")
        model(x)  # warm-up: builds swinkit's cached masks and biases
        first = bench._peak("cpu") - base
        base = bench._rss()
        bench._reset_peak("cpu")
        times = []
        for _ in range(spec["iters"]):
            t0 = time.perf_counter()
            out = model(x)
            times.append(time.perf_counter() - t0)
        peak = bench._peak("cpu") - base
    result = {"s_per_clip": statistics.median(times), "peak_mb": peak / 2**20, "first_call_peak_mb": first / 2**20,
              "logits": out[0, :4].tolist()}
    print(bench.RESULT_TAG + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--libs", nargs="+", default=["swinkit", "torchvision"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    from torchvision.models.video import swin3d_t

    from swinkit.tools import bench

    torch.manual_seed(0)
    weights = Path(tempfile.mkdtemp()) / "swin3d_t.pth"
    torch.save(swin3d_t().state_dict(), weights)
    cases = [(lib, t) for t in args.frames for lib in args.libs]
    results = {c: [] for c in cases}
    for r in range(args.repeats):
        for lib, frames in cases:
            spec = dict(lib=lib, frames=frames, threads=args.threads, iters=args.iters, weights=str(weights))
            res = bench.run_worker(__file__, spec)
            print(f"repeat {r + 1}: {lib} 1x3x{frames}x224x224: "
                  f"{ {k: v for k, v in res.items() if k != 'logits'} }", flush=True)
            results[(lib, frames)].append(res)
    rows = []
    for (lib, frames), rs in results.items():
        ok = [r for r in rs if "error" not in r]
        rows.append(dict(lib=lib, clip=f"1x3x{frames}x224x224", threads=args.threads,
                         s_per_clip=round(statistics.median(r["s_per_clip"] for r in ok), 3) if ok else None,
                         peak_mb=round(statistics.median(r["peak_mb"] for r in ok)) if ok else None,
                         first_call_peak_mb=round(statistics.median(r["first_call_peak_mb"] for r in ok))
                         if ok else None,
                         errors="; ".join(r["error"] for r in rs if "error" in r)))
    for frames in args.frames:
        by = {r["lib"]: r for r in rows if r["clip"] == f"1x3x{frames}x224x224"}
        a, b = by.get("swinkit"), by.get("torchvision")
        if a and b and a["s_per_clip"] and b["s_per_clip"]:
            same = [max(abs(x - y) for x, y in zip(results[("swinkit", frames)][0]["logits"],
                                                   results[("torchvision", frames)][0]["logits"]))]
            print(f"{frames} frames: swinkit {b['s_per_clip'] / a['s_per_clip']:.2f}x faster, "
                  f"{a['peak_mb'] / b['peak_mb']:.2f}x the peak memory of torchvision swin3d_t "
                  f"(logits differ by {same[0]:.1e})")
    bench.write_csv(rows, HERE / "video_speed.csv", list(rows[0]))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
