"""Mask R-CNN inference at 800x1333, batch 1: swinkit's maskrcnn_swin_t against torchvision's
maskrcnn_resnet50_fpn_v2 (what a user would pick instead), in one run, with where the time goes.

Both models have random weights and 80 (+1) classes. So that random weights do not decide how much work the heads
get, NMS is off (IoU threshold 1) and the score threshold 0 in both: each image gets exactly 1000 proposals and 100
detections, as a trained model on a busy image does. Every measurement runs in a fresh process
(clean peak RSS); the models alternate repeat by repeat. Each process warms up with one image, then times `--iters`
images through the same stages as GeneralizedRCNN.forward: transform (normalise, resize, batch), backbone + FPN,
RPN, RoI heads (box + mask), postprocess (boxes back to the image, masks pasted).

    .venv/bin/python benchmarks/detect_speed.py                 # 3 repeats x 3 images, 2 threads
    .venv/bin/python benchmarks/detect_speed.py --device cuda   # the same on a GPU

Prints the table and writes benchmarks/detect_speed.csv. peak_mb: the peak RSS (CPU) or allocated memory (GPU) of
the timed calls above what model and input hold.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODELS = ("swinkit maskrcnn_swin_t", "torchvision maskrcnn_resnet50_fpn_v2")
STAGES = ("transform", "backbone_fpn", "rpn", "roi_heads", "postprocess")


def build(name: str):
    if name.startswith("swinkit"):
        import swinkit

        model = swinkit.create_detector("maskrcnn_swin_t", num_classes=80, score_thresh=0.0)
    else:
        from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

        model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=81, box_score_thresh=0.0)
    model.rpn.nms_thresh = model.roi_heads.nms_thresh = 1.0
    return model


def staged(model, x: torch.Tensor, device: str) -> dict:
    """GeneralizedRCNN.forward in eval mode, one stage at a time -> seconds per stage."""
    from swinkit.tools import bench

    marks = [time.perf_counter()]

    def mark():
        bench._sync(device)
        marks.append(time.perf_counter())

    images, _ = model.transform([x])
    mark()
    feats = model.backbone(images.tensors)
    mark()
    proposals, _ = model.rpn(images, feats)
    mark()
    assert len(proposals[0]) == 1000, len(proposals[0])
    dets, _ = model.roi_heads(feats, proposals, images.image_sizes)
    mark()
    dets = model.transform.postprocess(dets, images.image_sizes, [tuple(x.shape[-2:])])
    mark()
    assert len(dets[0]["boxes"]) == 100, len(dets[0]["boxes"])
    return {s: b - a for s, a, b in zip(STAGES, marks, marks[1:])}


def worker(spec: dict) -> None:
    from swinkit.tools import bench

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    torch.manual_seed(0)
    model = build(spec["model"]).eval().to(device)
    with torch.no_grad():  # random weights everywhere, so that no branch is zero
        for p in model.parameters():
            p.normal_(0, 0.02)
    x = torch.rand(3, 800, 1333, device=device)
    with torch.inference_mode():
        staged(model, x, device)  # warm-up
        base = bench._rss() if device == "cpu" else bench._memory(device)
        bench._reset_peak(device)
        times = [staged(model, x, device) for _ in range(spec["iters"])]
        peak = bench._peak(device) - base
    result = {s: statistics.median(t[s] for t in times) for s in STAGES}
    result.update(total=statistics.median(sum(t.values()) for t in times), peak_mb=peak / 2**20,
                  params_m=sum(p.numel() for p in model.parameters()) / 1e6)
    print(bench.RESULT_TAG + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=3, help="timed images per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--csv", default=None, help="default benchmarks/detect_speed.csv (_cuda.csv on a GPU)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    from swinkit.tools import bench

    results = {m: [] for m in MODELS}
    for r in range(args.repeats):
        for m in MODELS:
            res = bench.run_worker(__file__, dict(model=m, threads=args.threads, iters=args.iters, device=args.device))
            print(f"repeat {r + 1}: {m}: {res}", flush=True)
            results[m].append(res)
    rows = []
    for m, rs in results.items():
        ok = [r for r in rs if "error" not in r]
        row = dict(model=m, device=bench.machine(args.device), threads=args.threads, input="800x1333", batch=1,
                   runs=len(ok), params_m=round(ok[0]["params_m"], 1) if ok else None)
        for k in ("total", *STAGES):
            row[f"{k}_s"] = round(statistics.median(r[k] for r in ok), 3) if ok else None
        row["peak_mb"] = round(statistics.median(r["peak_mb"] for r in ok)) if ok else None
        row["errors"] = "; ".join(r["error"] for r in rs if "error" in r)
        rows.append(row)
    a, b = rows
    if a["total_s"] and b["total_s"]:
        print(f"swinkit maskrcnn_swin_t: {b['total_s'] / a['total_s']:.2f}x the speed of maskrcnn_resnet50_fpn_v2, "
              f"{a['peak_mb'] / b['peak_mb']:.2f}x its peak memory")
    csv = args.csv or HERE / ("detect_speed.csv" if args.device == "cpu" else f"detect_speed_{args.device}.csv")
    bench.write_csv(rows, csv, list(rows[0]))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
