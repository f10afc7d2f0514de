"""UPerNet Swin-T inference, swinkit against transformers' UperNetForSemanticSegmentation with the same weights:
time and peak memory at 512x512 batch 2, and swinkit's peak at 2048x1024 (a Cityscapes-size image, whole-image
inference). Every measurement runs in a fresh process (clean peak RSS); the libraries alternate repeat by repeat.

    .venv/bin/python benchmarks/segment_speed.py                  # 3 repeats, 2 threads, 150 classes
    .venv/bin/python benchmarks/segment_speed.py --repeats 5 --allocator tuned

Prints the table and writes benchmarks/segment_speed.csv. Peak memory is the process's peak RSS above its RSS
once model and input are built (what `swinkit bench` reports).
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
    import swinkit
    from swinkit.tools import bench

    torch.set_num_threads(spec["threads"])
    if spec["allocator"] == "tuned":
        swinkit.tune_cpu_allocator()
    if spec["lib"] == "swinkit":
        model = swinkit.load_model(spec["swinkit_file"])
        run = model
    else:
        from transformers import UperNetForSemanticSegmentation

        model = UperNetForSemanticSegmentation.from_pretrained(spec["hf_dir"]).eval()
        run = lambda x: model(pixel_values=x).logits  # noqa: E731
    x = torch.randn(spec["batch"], 3, *spec["size"])
    with torch.inference_mode():
        run(x)  # warm-up
        base = bench._rss()
        bench._reset_peak("cpu")
        times = []
        for _ in range(spec["iters"]):
            t0 = time.perf_counter()
            out = run(x)
            times.append(time.perf_counter() - t0)
        peak = bench._peak("cpu") - base
    assert out.shape[-2:] == x.shape[-2:]
    print(bench.RESULT_TAG + json.dumps({"s_per_step": statistics.median(times), "peak_mb": peak / 2**20}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--allocator", choices=["system", "tuned"], default="system")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    import swinkit
    from swinkit.io.formats.segmentation import write_segmentation_checkpoint
    from swinkit.tools import bench

    torch.manual_seed(0)
    model = swinkit.create_segmentation_model("upernet_swin_t", num_classes=150).eval()
    tmp = Path(tempfile.mkdtemp())
    swinkit.save_model(model, tmp / "upernet.safetensors")
    write_segmentation_checkpoint(model.state_dict(), model.cfg, tmp / "hf", "hf")
    common = dict(threads=args.threads, allocator=args.allocator, iters=args.iters,
                  swinkit_file=str(tmp / "upernet.safetensors"), hf_dir=str(tmp / "hf"))
    cases = [("swinkit", (512, 512), 2), ("transformers", (512, 512), 2), ("swinkit", (1024, 2048), 1)]
    results = {c: [] for c in cases}
    for r in range(args.repeats):
        for lib, size, batch in cases:
            res = bench.run_worker(__file__, {**common, "lib": lib, "size": size, "batch": batch})
            print(f"repeat {r + 1}: {lib} {size[0]}x{size[1]} b{batch}: {res}", flush=True)
            results[(lib, size, batch)].append(res)
    rows = []
    for (lib, size, batch), rs in results.items():
        ok = [r for r in rs if "error" not in r]
        rows.append(dict(lib=lib, size=f"{size[1]}x{size[0]}", batch=batch, allocator=args.allocator,
                         s_per_step=round(statistics.median(r["s_per_step"] for r in ok), 3) if ok else None,
                         peak_mb=round(statistics.median(r["peak_mb"] for r in ok)) if ok else None,
                         errors="; ".join(r["error"] for r in rs if "error" in r)))
    ours, peer = rows[0], rows[1]
    if ours["s_per_step"] and peer["s_per_step"]:
        print(f"512x512 b2: swinkit {peer['s_per_step'] / ours['s_per_step']:.2f}x faster, "
              f"{ours['peak_mb'] / peer['peak_mb']:.2f}x the peak memory of transformers")
    bench.write_csv(rows, HERE / "segment_speed.csv", list(rows[0]))  # atomic, like every swinkit CSV
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
