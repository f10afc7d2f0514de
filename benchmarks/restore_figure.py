"""Before / after figure for the README: a Set5 crop upscaled x2 by bicubic interpolation and by a trained SwinIR,
beside the ground truth, with each whole image's PSNR-Y / SSIM-Y (the papers' protocol).

    .venv/bin/python benchmarks/restore_figure.py --checkpoint benchmarks/runs/restore_lightweight_x2

Writes docs/figures/restore_set5.png.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image

from swinkit.tasks.restore import load_restoration_model, read_picture, restoration_metrics, restore_tensor

HERE = Path(__file__).resolve().parent
SET5 = HERE.parent.parent / "shared" / "data" / "set5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run directory or checkpoint of an x2 SR model")
    parser.add_argument("--image", default="butterfly")
    parser.add_argument("--crop", type=int, nargs=4, default=[60, 60, 140, 140], metavar=("Y0", "X0", "Y1", "X1"),
                        help="crop of the HR image in pixels")
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "figures" / "restore_set5.png"))
    args = parser.parse_args()
    model, meta = load_restoration_model(args.checkpoint)
    s = meta["scale"]
    lr_path = SET5 / "LR_bicubic" / f"X{s}" / f"{args.image}x{s}.png"
    lr, hr = read_picture(lr_path).pixels, read_picture(SET5 / "HR" / f"{args.image}.png").pixels  # (3, H, W)
    pil = Image.open(lr_path).convert("RGB")
    bicubic = torch.from_numpy(np.asarray(pil.resize((pil.width * s, pil.height * s), Image.Resampling.BICUBIC)))
    bicubic = bicubic.permute(2, 0, 1) / 255  # (3, sH, sW)
    with torch.no_grad():
        restored = restore_tensor(model, lr[None], s)[0].clamp(0, 1)
    y0, x0, y1, x1 = args.crop
    panels = [("bicubic", bicubic), ("SwinIR (swinkit)", restored), ("ground truth", hr[:, :restored.shape[1],
                                                                                      :restored.shape[2]])]
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    for ax, (title, img) in zip(fig.subplots(1, 3), panels):
        crop = F.interpolate(img[None, :, y0:y1, x0:x1], scale_factor=3, mode="nearest")[0]
        ax.imshow(crop.permute(1, 2, 0).numpy())
        if title != "ground truth":
            m = restoration_metrics(img, hr, border=s)
            title += f"\nPSNR-Y {m['psnr_y']:.2f} dB, SSIM-Y {m['ssim_y']:.4f} (whole image)"
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.suptitle(f"Set5 {args.image} x{s}, crop rows {y0}-{y1}, columns {x0}-{x1} (nearest-enlarged 3x)")
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
