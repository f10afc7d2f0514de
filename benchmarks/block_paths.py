"""Where the windows path pays: one shifted Swin-T block per stage, windows vs plain path, in eval without grad,
against the block's input size (B*H*W*C elements). This is what sets swinkit.nn.blocks.WINDOWS_MIN_ELEMENTS.

    .venv/bin/python benchmarks/block_paths.py            # fp32 and bfloat16 autocast, batches 1..16

Prints one line per (dtype, stage, batch): the two median times and their ratio; writes benchmarks/block_paths.csv.
"""
import statistics
import time
from pathlib import Path

import torch

from swinkit import create_model
from swinkit.tools import bench

HERE = Path(__file__).resolve().parent
STAGES = [(0, 56, 96), (1, 28, 192), (2, 14, 384), (3, 7, 768)]  # Swin-T at 224^2: stage, map side, width


def median_time(block, x, path: str, reps: int) -> float:
    block.inference_path = path
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        block(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(2)
    model = create_model("swin_t").eval()
    rows = []
    for dtype in ("float32", "bfloat16"):
        ctx = torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bfloat16")
        with torch.inference_mode(), ctx:
            for stage, side, width in STAGES:
                block = model.layers[stage].blocks[1]  # shifted
                for batch in (1, 2, 4, 8, 16):
                    x = torch.randn(batch, side, side, width)
                    for path in ("windows", "plain"):
                        median_time(block, x, path, 2)  # warm-up
                    w, p = (median_time(block, x, path, 7) for path in ("windows", "plain"))
                    rows.append(dict(dtype=dtype, stage=stage, batch=batch, elements=x.numel(),
                                     windows_ms=round(w * 1e3, 2), plain_ms=round(p * 1e3, 2),
                                     windows_over_plain=round(w / p, 3)))
                    print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    bench.write_csv(rows, HERE / "block_paths.csv", list(rows[0]))  # atomic, like every swinkit CSV
    print(f"wrote {HERE / 'block_paths.csv'}")


if __name__ == "__main__":
    main()
