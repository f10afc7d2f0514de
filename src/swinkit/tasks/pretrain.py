"""SimMIM self-supervised pre-training (Xie et al., CVPR 2022): reconstruct the raw pixels of randomly masked
32x32 blocks of unlabelled images with a Swin encoder and a linear decoder (swinkit.models.simmim).

Data: every image under --data, searched recursively (class sub-folders and labels are ignored); a seeded share
is held out for validation. Training crops at random (area 0.67-1, the official recipe), flips, normalises with the
ImageNet mean and std and draws a fresh mask per image from the loop's per-sample seed; validation resizes and
centre-crops, with one fixed mask per image, so its loss is comparable between epochs. Metrics: the masked L1 loss
(on the normalised image, the training objective) and the PSNR of the masked pixels in [0, 1] RGB, the primary
metric (higher is better, as best.pt assumes).

The checkpoint holds `encoder.*` (a SwinTransformer without head), `mask_token` and `decoder.*`; its "config" is
the encoder's SwinConfig, so `swinkit train --pretrained RUN/best.pt` fine-tunes the encoder (see
simmim_encoder_state_dict).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..config import SwinConfig
from ..data import IMAGENET_MEAN, IMAGENET_STD, IMG_EXTENSIONS, check_image, eval_transform, load_image, train_transform
from ..io.files import check_outputs
from ..io.images import image_files
from ..models.simmim import MASK_PATCH_SIZE, MASK_RATIO, SimMIM, pixel_mask, random_mask, random_masks
from .base import AMP_DTYPES, Loaded, Task, TaskSettings, autocast, setting

ARCH_KEYS = ("img_size", "patch_size", "window_size", "embed_dim", "depths", "num_heads")
SMALL_DATA_IMAGES = 20_000  # from scratch on fewer images than this (and no --recipe), the small recipe is picked


@dataclass
class PretrainSettings(TaskSettings):
    """SimMIM settings; the defaults are the official Swin-B 100-epoch recipe (recipe `simmim`)."""
    data: str | None = setting(None, "folder of images, searched recursively (sub-folders and labels ignored)")
    model: str = setting("swin_base_patch4_window7_224", "encoder variant, see `swinkit models`")
    pretrained: str | None = setting(None, "start from these weights (a `--task pretrain` run or checkpoint)")
    img_size: int | None = setting(None, "training size, a multiple of --mask-patch-size (default: the recipe's)")
    patch_size: int | None = setting(None)
    window_size: list[int] | None = setting(None, "one value, or one per stage", nargs="+")
    embed_dim: int | None = setting(None)
    depths: list[int] | None = setting(None, nargs="+")
    num_heads: list[int] | None = setting(None, nargs="+")
    drop_path_rate: float | None = setting(None, "stochastic depth (default: the recipe's)")
    mask_patch_size: int = setting(MASK_PATCH_SIZE, "pixels per side of a masked block", valid=">= 1")
    mask_ratio: float = setting(MASK_RATIO, "share of blocks masked (round(ratio x blocks) per image)", valid="(0, 1]")
    scale: list[float] = setting([0.67, 1.0], "random-resized-crop area range", nargs=2)
    hflip: float = setting(0.5, "horizontal flip probability", valid="0..1")
    val_fraction: float = setting(0.05, "share of the images held out for validation (at least one)", valid="[0, 1)")
    verify_images: bool = setting(True, "decode every image once before training and skip unreadable ones")


RECIPES: dict[str, dict[str, Any]] = {
    # microsoft/SimMIM configs/swin_base__100ep/simmim_pretrain__swin_base__img192_window6__100ep.yaml: Swin-B at
    # 192 px with window 6, lr 2e-4 per 512 images (2048 on 16 GPUs), cosine, clip 5
    "simmim": dict(img_size=192, window_size=6, drop_path_rate=0.0, epochs=100, warmup_epochs=10, lr=2e-4,
                   warmup_lr=1e-6, min_lr=1e-5, weight_decay=0.05, clip_grad=5.0),
    # small data on a CPU or one GPU: a 4-stage Swin of 3.1M parameters at 96 px (3x3 blocks, 5 masked); a
    # starting point, not a measured recipe
    "small": dict(model="swin_t", img_size=96, patch_size=4, window_size=6, embed_dim=32, depths=[2, 2, 2, 2],
                  num_heads=[1, 2, 4, 8], drop_path_rate=0.0, epochs=50, warmup_epochs=2, batch_size=32, lr=1e-3,
                  lr_base_size=32, warmup_lr=1e-6, min_lr=1e-5),
}


def split_files(files: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """(train, val): round(val_fraction x n) files (at least one) drawn with `seed` go to val."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    n_val = max(1, round(val_fraction * len(files)))
    if len(files) <= n_val:
        raise ValueError(f"{len(files)} image(s) in --data, too few to hold out {n_val} for validation and train on "
                         "the rest; add images")
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    return [files[i] for i in sorted(order[n_val:])], [files[i] for i in sorted(order[:n_val])]


class MaskedImages(Dataset):
    """Image files -> (normalised image (3, S, S), token mask (S/p, S/p) bool). `seed` None: masks from torch's
    default generator (which the loop seeds per sample); an int: one fixed mask per index (validation)."""

    def __init__(self, files: list[Path], transform, mask_patch_size: int, patch_size: int, ratio: float,
                 seed: int | None = None):
        self.files, self.transform, self.seed = list(files), transform, seed
        self.mask_kw = dict(mask_patch_size=mask_patch_size, patch_size=patch_size, ratio=ratio)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        self.files[index]  # IndexError past the end, as iteration expects
        for attempt in range(len(self.files)):
            path = self.files[(index + attempt) % len(self.files)]
            try:
                img = load_image(path)
                break
            except (OSError, ValueError) as e:
                warnings.warn(f"could not read {path} ({e}); using the next image instead", stacklevel=2)
        else:
            raise RuntimeError("none of the images can be read")
        x = self.transform(img)
        g = None if self.seed is None else torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return x, random_mask(tuple(x.shape[-2:]), generator=g, **self.mask_kw)


def readable(files: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(files that decode, [(path, reason)] of those that do not), with a warning naming the first few."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        reasons = list(pool.map(check_image, map(str, files)))
    skipped = [(str(p), r) for p, r in zip(files, reasons) if r is not None]
    if skipped:
        first = "\n".join(f"  {p}: {r}" for p, r in skipped[:5])
        warnings.warn(f"skipped {len(skipped)} unreadable image file(s):\n{first}" + ("\n  ..." if len(skipped) > 5
                                                                                       else ""), stacklevel=3)
    return [p for p, r in zip(files, reasons) if r is None], skipped


# ----------------------------------------------------------------------------------------------------------
# metrics and the figure


def _denormalize(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) ImageNet-normalised -> [0, 1] RGB."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None = None) -> dict:
    """Masked L1 (normalised image, over all masked pixels and channels of the set) and the mean per-image PSNR
    of the masked pixels in [0, 1] RGB, summed across ranks when distributed."""
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # L1 sum, masked values, PSNR sum, images
    for x, mask in loader:
        x, mask = x.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            _, rec = model(x, mask)
        rec, p = rec.float(), x.shape[-1] // mask.shape[-1]
        m = pixel_mask(mask, p).float()  # (B, 1, H, W)
        err = ((_denormalize(rec) - _denormalize(x)) ** 2 * m).sum((1, 2, 3)) / (m.sum((1, 2, 3)) * 3).clamp(min=1)
        psnr = -10 * torch.log10(err.clamp(min=1e-10))  # (B,)
        sums += torch.stack([((rec - x).abs() * m).sum(), m.sum() * x.shape[1], psnr.sum(),
                             torch.tensor(len(x), device=device)]).double()
    if dist.is_initialized():
        dist.all_reduce(sums)
    l1, count, psnr, n = sums.tolist()
    return {"loss": l1 / max(count, 1), "masked_psnr": psnr / max(n, 1), "num_images": int(n)}


@torch.no_grad()
def simmim_figure(model: SimMIM, images: torch.Tensor, path: str | Path, mask: torch.Tensor | None = None,
                  mask_patch_size: int = MASK_PATCH_SIZE, ratio: float = MASK_RATIO, seed: int = 0) -> Path:
    """simmim_plot's figure written atomically as PNG (or the format of `path`'s suffix)."""
    import matplotlib.pyplot as plt

    from ..io.files import atomic_write

    fig = simmim_plot(model, images, mask, mask_patch_size, ratio, seed)
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=100))
    plt.close(fig)
    return path


def simmim_plot(model: SimMIM, images: torch.Tensor, mask: torch.Tensor | None = None,
                mask_patch_size: int = MASK_PATCH_SIZE, ratio: float = MASK_RATIO, seed: int = 0):
    """A figure with one row per image: the input, the masked input (masked blocks grey), the reconstruction
    (predicted pixels in the masked blocks, the input elsewhere, as the paper shows them) and the raw prediction.
    `images`: (B, 3, H, W) ImageNet-normalised, H and W multiples of `mask_patch_size`; `mask` (B, H/p, W/p) or
    drawn with `seed`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device = next(model.parameters()).device
    x = images.to(device)
    p = model.cfg.patch_size
    if mask is None:
        mask = random_masks(len(x), tuple(x.shape[-2:]), mask_patch_size, p, ratio, torch.Generator().manual_seed(seed))
    mask = mask.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, rec = model(x, mask)
    finally:
        model.train(was_training)
    m = pixel_mask(mask, p).float()  # (B, 1, H, W)
    inp, pred = _denormalize(x.float()), _denormalize(rec.float())
    columns = {"input": inp, "masked": inp * (1 - m) + 0.5 * m, "reconstruction": inp * (1 - m) + pred * m,
               "prediction": pred}
    fig, axes = plt.subplots(len(x), len(columns), figsize=(2.4 * len(columns), 2.4 * len(x)), squeeze=False)
    for i in range(len(x)):
        for j, (title, t) in enumerate(columns.items()):
            ax = axes[i, j]
            ax.imshow(t[i].permute(1, 2, 0).cpu().numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title)
    fig.suptitle(f"SimMIM: {int(mask[0].float().mean().item() * 100 + 0.5)}% of the tokens masked")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------------
# transformers' SwinForMaskedImageModeling weights


def from_hf_simmim(sd: dict, strict: bool = True) -> dict:
    """A transformers SwinForMaskedImageModeling state dict -> swinkit SimMIM's: `swin.embeddings.mask_token`
    (1, 1, D) -> `mask_token` (1, 1, 1, D), `decoder.0.*` stays, the rest (`swin.*`, SwinModel keys) goes
    through swinkit's "hf" encoder key map under `encoder.`."""
    from ..io.formats.swin import to_swinkit

    sd = dict(sd)
    token = sd.pop("swin.embeddings.mask_token", None)
    if token is None:
        raise ValueError("expected a SwinForMaskedImageModeling state dict with swin.embeddings.mask_token; it has "
                         f"none (first keys: {', '.join(list(sd)[:5])})")
    decoder = {k: sd.pop(k) for k in list(sd) if k.startswith("decoder.")}
    encoder = to_swinkit(sd, "hf", strict).state_dict
    return {**{f"encoder.{k}": v for k, v in encoder.items()}, "mask_token": token.reshape(1, 1, 1, -1), **decoder}


# ----------------------------------------------------------------------------------------------------------
# the task


class PretrainTask(Task):
    """SimMIM pre-training of a Swin encoder on the images under --data."""

    name = "pretrain"
    primary_metric = "masked_psnr"
    Settings = PretrainSettings
    recipes = RECIPES
    default_recipe = "simmim"
    plot_metrics = ("masked_psnr",)

    # ---- settings

    @classmethod
    def choose_recipe(cls, given: dict) -> tuple[str, str | None]:
        """small from scratch on fewer than SMALL_DATA_IMAGES images with no architecture flags, else simmim."""
        if not given.get("data") or given.get("pretrained") or any(k in given for k in ("model", *ARCH_KEYS)):
            return "simmim", None
        folder = Path(given["data"])
        n = len(image_files(folder)) if folder.is_dir() else 0
        if not 0 < n < SMALL_DATA_IMAGES:
            return "simmim", None
        return "small", (f"recipe small: {n} images (fewer than {SMALL_DATA_IMAGES:,}); the official Swin-B recipe "
                         "is built for ImageNet's 1.28M. --recipe simmim keeps it")

    @classmethod
    def resolve(cls, flat: dict, given: dict) -> dict:
        if not flat["data"]:
            raise ValueError("the pretrain task learns from unlabelled images: pass --data DIR (any folder of images, "
                             "searched recursively)")
        if flat["pretrained"]:
            clash = [k for k in ("model", *ARCH_KEYS) if k in given]
            if clash:
                raise ValueError(f"--pretrained takes the architecture and size from the checkpoint; remove "
                                 f"{['--' + k.replace('_', '-') for k in clash]}")
            flat.update({k: None for k in ARCH_KEYS})
        if isinstance(flat["window_size"], list) and len(flat["window_size"]) == 1:
            flat["window_size"] = flat["window_size"][0]
        if flat["img_size"] and flat["img_size"] % flat["mask_patch_size"]:
            m = flat["mask_patch_size"]
            raise ValueError(f"--img-size {flat['img_size']} must be a multiple of --mask-patch-size {m}, e.g. "
                             f"{-(-flat['img_size'] // m) * m}")
        if not 0.0 <= flat["mask_ratio"] <= 1.0:
            raise ValueError(f"--mask-ratio must be in [0, 1], got {flat['mask_ratio']}")
        return flat

    # ---- training

    def build_datasets(self):
        c = self.cfg
        folder = Path(c.data)
        if not folder.is_dir():
            raise FileNotFoundError(f"--data {folder}: expected a folder of images, but it does not exist")
        files = image_files(folder)
        if not files:
            raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {folder}")
        files, self.skipped = readable(files) if c.verify_images else (files, [])
        train, val = split_files(files, c.val_fraction, self.settings.run.seed)
        self.train_ds = MaskedImages(train, None, c.mask_patch_size, 4, c.mask_ratio)
        self.val_ds = MaskedImages(val, None, c.mask_patch_size, 4, c.mask_ratio, seed=self.settings.run.seed)
        return self.train_ds, self.val_ds

    def build_model(self, config: dict | None = None) -> SimMIM:
        """The model, then the transforms and masks at its size and patch size."""
        model = self.model_from_config(config) if config else self._new_model()
        c, size = self.cfg, model.cfg.img_size[0]
        if model.cfg.img_size[0] != model.cfg.img_size[1]:
            raise ValueError(f"expected a square img_size, got {model.cfg.img_size}")
        if size % c.mask_patch_size or size % model.encoder_stride:
            raise ValueError(f"the model's img_size {size} must be a multiple of --mask-patch-size {c.mask_patch_size} "
                             f"and of its encoder stride {model.encoder_stride}; pass --img-size")
        self.train_ds.transform = train_transform(size, c.scale, c.hflip, randaug_n=0, reprob=0.0)
        self.val_ds.transform = eval_transform(size, 1.0)
        for ds in (self.train_ds, self.val_ds):
            ds.mask_kw["patch_size"] = model.cfg.patch_size
        return model

    def _new_model(self) -> SimMIM:
        c = self.cfg
        if c.pretrained:  # continue a SimMIM run's weights (a fresh schedule)
            path = Path(c.pretrained) / "best.pt" if Path(c.pretrained).is_dir() else Path(c.pretrained)
            if not path.is_file():
                raise FileNotFoundError(f"--pretrained {c.pretrained}: expected a run directory of `swinkit train "
                                        "--task pretrain` or its best.pt, but it does not exist")
            model = self.load(path, torch.load(path, map_location="cpu", weights_only=True)).model.train()
            if c.drop_path_rate is not None:
                model.encoder.set_drop_path(c.drop_path_rate)
            return model
        arch = {k: getattr(c, k) for k in (*ARCH_KEYS, "drop_path_rate") if getattr(c, k) is not None}
        cfg = SwinConfig.from_name(c.model, num_classes=0, **arch)
        if cfg.describe().startswith("custom"):
            cfg.name = "custom"  # a variant's name stays only on the variant's architecture
        return SimMIM(cfg)

    def model_config(self, model: SimMIM) -> dict:
        return model.cfg.to_dict()

    @classmethod
    def model_from_config(cls, config: dict) -> SimMIM:
        return SimMIM(SwinConfig.from_dict(config))

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, mask = (t.to(self.env.device, non_blocking=True) for t in batch)
        return model(x, mask)[0]

    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        m = evaluate(model, loader, self.env.device, self.env.amp_dtype)
        return {"loss": m["loss"], "masked_psnr": m["masked_psnr"]}

    def checkpoint_meta(self) -> dict:
        c = self.cfg
        return {"simmim": {"mask_patch_size": c.mask_patch_size, "mask_ratio": c.mask_ratio,
                           "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}

    def summary_extra(self) -> dict:
        return {"skipped_files": len(self.skipped)}

    def describe_model(self, model: SimMIM) -> str:
        return f"SimMIM on {model.cfg.describe()}"

    def describe_data(self, train, val) -> str:
        c = self.cfg
        return (f"{len(train)} images, val {len(val)}; {c.mask_patch_size}px blocks, {c.mask_ratio:.0%} masked")

    def describe(self, metrics: dict[str, float]) -> str:
        return f"masked PSNR {metrics['masked_psnr']:.2f} dB" if "masked_psnr" in metrics else ""

    # ---- eval and predict

    @classmethod
    def load(cls, path: Path, ck: dict | None) -> Loaded:
        if ck is None or ck.get("task") != cls.name:
            what = "no swinkit checkpoint" if ck is None else f"a checkpoint of the {ck.get('task')} task"
            raise ValueError(f"{path}: expected a checkpoint of `swinkit train --task pretrain`, got {what}")
        return super().load(path, ck)

    @classmethod
    def add_eval_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--img-size", type=int, help="evaluation size (default: the checkpoint's)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the fixed masks")

    @classmethod
    def run_eval(cls, loaded: Loaded, args: argparse.Namespace) -> tuple[dict, str]:
        model, s = loaded.model, loaded.meta["simmim"]
        size, device = args.img_size or model.cfg.img_size[0], torch.device(args.device)
        files = image_files(Path(args.data))
        if not files:
            raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {args.data}")
        files, skipped = readable(files)
        ds = MaskedImages(files, eval_transform(size, 1.0), s["mask_patch_size"], model.cfg.patch_size,
                          s["mask_ratio"], seed=args.seed)
        m = evaluate(model.to(device), DataLoader(ds, args.batch_size, num_workers=args.workers), device,
                     AMP_DTYPES[args.amp])
        result = {**m, "skipped_files": len(skipped), "checkpoint": str(args.checkpoint), "data": str(args.data),
                  "img_size": size}
        text = (f"{args.checkpoint} on {args.data} ({m['num_images']} images at {size}px, "
                f"{s['mask_ratio']:.0%} of {s['mask_patch_size']}px blocks masked)\n"
                f"masked L1 {m['loss']:.4f}  masked PSNR {m['masked_psnr']:.2f} dB")
        return result, text

    @classmethod
    def add_predict_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, default=Path("simmim.png"), help="figure of the reconstructions")
        parser.add_argument("--seed", type=int, default=0, help="seed of the masks")

    @classmethod
    def run_predict(cls, loaded: Loaded, args: argparse.Namespace) -> int:
        """Mask and reconstruct args.images; draw them in one figure (simmim_figure) at args.out."""
        check_outputs([args.out], args.images, args.overwrite)
        model, s = loaded.model.to(args.device), loaded.meta["simmim"]
        tf, batch, failed = eval_transform(model.cfg.img_size[0], 1.0), [], 0
        for path in args.images:
            try:
                batch.append(tf(load_image(path)))
            except (OSError, ValueError) as e:
                failed += 1
                print(f"error: cannot read {path}: {e}", file=sys.stderr)
        if batch:
            out = simmim_figure(model, torch.stack(batch), args.out, mask_patch_size=s["mask_patch_size"],
                                ratio=s["mask_ratio"], seed=args.seed)
            print(f"wrote {out}")
        return 1 if failed or not batch else 0
