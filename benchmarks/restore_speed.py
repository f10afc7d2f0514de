"""Restoration inference: swinkit's Swin2SR against transformers' Swin2SRForImageSuperResolution with the same
weights (classical x2 on 256x256, lightweight x4 on 512x512: the inputs of issue 15), and swinkit's whole-image
inference on large inputs (classical SwinIR x4 on 1024x1024 -> 4096x4096, x2 on 2048x2048). Every measurement runs
in a fresh process (clean peak RSS); the libraries alternate repeat by repeat. The official SwinIR code is not a
package and is not installed here, so it is not measured.

    .venv/bin/python benchmarks/restore_speed.py                       # the paired rows, 3 repeats
    .venv/bin/python benchmarks/restore_speed.py --large 1024x4       # plus a whole-image row (minutes)
    .venv/bin/python benchmarks/restore_speed.py --no-paired --large 2048x2 --csv benchmarks/restore_speed_large.csv

Prints the table and writes benchmarks/restore_speed.csv (or --csv). peak_mb: the peak RSS of the timed call above
the RSS once model and input are built (one call, no warm-up: a user restores an image once).
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# (label, variant, overrides, input side): lightweight x4 is swin2sr_lightweight_x2's configuration at upscale 4
PAIRED = [("swin2sr_classical_x2", "swin2sr_classical_x2", {}, 256),
          ("swin2sr_lightweight_x4", "swin2sr_lightweight_x2", {"upscale": 4}, 512)]


def worker(spec: dict) -> None:
    from swinkit.tools import bench

    torch.set_num_threads(spec["threads"])
    if spec["lib"] == "swinkit":
        import swinkit

        model = swinkit.load_model(spec["weights"]).eval()
        run = model
    else:
        from transformers import Swin2SRForImageSuperResolution

        model = Swin2SRForImageSuperResolution.from_pretrained(spec["weights"]).eval()
        run = lambda x: model(pixel_values=x).reconstruction  # noqa: E731
    torch.manual_seed(1)
    x = torch.rand(1, 3, spec["size"], spec["size"])
    with torch.inference_mode():
        base = bench._rss()
        bench._reset_peak("cpu")
        t0 = time.perf_counter()
        out = run(x)
        seconds = time.perf_counter() - t0
        peak = bench._peak("cpu") - base
    result = {"s_per_image": seconds, "peak_mb": peak / 2**20, "out": list(out.shape), "corner": out[0, :, :2, :2]
              .flatten().tolist()}
    print(bench.RESULT_TAG + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--large", nargs="*", default=[], metavar="SIZExSCALE",
                        help="whole-image rows of classical SwinIR, e.g. 1024x4 2048x2")
    parser.add_argument("--paired", action=argparse.BooleanOptionalAction, default=True,
                        help="the rows against transformers (default: on)")
    parser.add_argument("--csv", default=str(HERE / "restore_speed.csv"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    import swinkit
    from swinkit.io.load import write_checkpoint
    from swinkit.tools import bench

    tmp = Path(tempfile.mkdtemp())
    cases = []
    for name, variant, overrides, size in PAIRED if args.paired else []:
        torch.manual_seed(0)
        model = swinkit.create_restoration_model(variant, **overrides)
        with torch.no_grad():  # random weights everywhere, so that no branch is zero
            for p in model.parameters():
                p.normal_(0, 0.02)
        swinkit.save_model(model, tmp / f"{name}.safetensors")
        write_checkpoint(model.state_dict(), model.cfg, tmp / f"{name}_hf", "hf")
        cases += [("swinkit", name, size, str(tmp / f"{name}.safetensors")),
                  ("transformers", name, size, str(tmp / f"{name}_hf"))]
    for spec in args.large:
        size, scale = (int(v) for v in spec.split("x"))
        name = f"swinir_classical_x{scale}"
        swinkit.save_model(swinkit.create_restoration_model(name), tmp / f"{name}.safetensors")
        cases.append(("swinkit", name, size, str(tmp / f"{name}.safetensors")))
    results = {c: [] for c in cases}
    for r in range(args.repeats):
        for case in cases:
            lib, name, size, weights = case
            if r and name.startswith("swinir"):  # the whole-image rows once: minutes each
                continue
            res = bench.run_worker(__file__, dict(lib=lib, size=size, weights=weights, threads=args.threads))
            print(f"repeat {r + 1}: {lib} {name} {size}x{size}: "
                  f"{ {k: v for k, v in res.items() if k != 'corner'} }", flush=True)
            results[case].append(res)
    rows = []
    for (lib, name, size, _), rs in results.items():
        ok = [r for r in rs if "error" not in r]
        rows.append(dict(lib=lib, model=name, input=f"{size}x{size}", threads=args.threads, runs=len(ok),
                         s_per_image=round(statistics.median(r["s_per_image"] for r in ok), 2) if ok else None,
                         peak_mb=round(statistics.median(r["peak_mb"] for r in ok)) if ok else None,
                         output="x".join(map(str, ok[0]["out"][2:])) if ok else None,
                         errors="; ".join(r["error"] for r in rs if "error" in r)))
    for name, _, _, size in PAIRED if args.paired else []:
        by = {r["lib"]: r for r in rows if r["model"] == name}
        a, b = by["swinkit"], by["transformers"]
        if a["s_per_image"] and b["s_per_image"]:
            ra, rb = results[("swinkit", name, size, str(tmp / f"{name}.safetensors"))][0], \
                results[("transformers", name, size, str(tmp / f"{name}_hf"))][0]
            diff = max(abs(x - y) for x, y in zip(ra["corner"], rb["corner"]))
            print(f"{name} {size}x{size}: swinkit {b['s_per_image'] / a['s_per_image']:.2f}x faster, "
                  f"{a['peak_mb'] / b['peak_mb']:.2f}x the peak memory of transformers (outputs differ by {diff:.1e})")
    bench.write_csv(rows, args.csv, list(rows[0]))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
