"""Robustness of any image classifier: translation consistency and corruption accuracy (issue 26).

Every function takes `predict(x) -> (N,) top-1 class indices` for float images x in [0, 1] of shape (N, 3, H, W),
before normalisation: the caller wraps normalisation and the model, e.g.
`lambda x: model((x - mean) / std).argmax(1)`. All results are fractions in [0, 1].

Translation consistency (after Zhang 2019, "Making convolutional networks shift-invariant again"): for s = 1..k, the
image is moved right by s and down by s pixels, and the score is the fraction of images whose top-1 equals the top-1
on the unshifted image.
- cyclic: `torch.roll`; what leaves the right / bottom edge comes back at the left / top. A model that is exactly
  invariant to cyclic shifts (global pooling of pixels) scores 1.0.
- pad: the image moves and the s uncovered rows and columns at the top / left are filled with one colour, by default
  the images' mean colour (per channel): what normalisation maps to about zero, i.e. zero padding as the network sees
  it. The command line fills with the checkpoint's normalisation mean, so the filled pixels are exactly 0 after
  normalisation.

Corruptions, CIFAR-10-C style (Hendrycks & Dietterich 2019, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR; parameters from the CIFAR-10-C table of their make_cifar_c.py, the table for
small images, rather than ImageNet-C's), generated on the fly from the clean images:

| corruption     | parameter c (severity 1..5)     | what is done                                              |
| -------------- | ------------------------------- | --------------------------------------------------------- |
| gaussian_noise | std 0.04, 0.06, 0.08, 0.09, 0.10| x + c * N(0, 1), clipped to [0, 1]                        |
| blur           | sigma 0.4, 0.6, 0.7, 0.8, 1.0   | Gaussian blur, sigma = c * min(H, W) / 32 (a 32x32 image: |
|                |                                 | exactly c, as CIFAR-10-C), radius ceil(4 sigma) (skimage's|
|                |                                 | default truncation, as the reference used), reflect edges |
| contrast       | 0.75, 0.5, 0.4, 0.3, 0.15       | torchvision adjust_contrast: c * x + (1 - c) * the image's|
|                |                                 | grey mean (the reference blends to each channel's mean)   |
| jpeg           | quality 80, 65, 58, 50, 40      | rounded to 8 bits, PIL's JPEG encoder and decoder         |
| pixelate       | 0.95, 0.9, 0.85, 0.75, 0.65     | box (area) down to int(c * H) x int(c * W), nearest back  |
| brightness     | 0.05, 0.1, 0.15, 0.2, 0.3       | HSV value + c, clipped to 1 (hue and saturation kept): as |
|                |                                 | the reference's rgb2hsv / hsv2rgb, computed in RGB        |

Severity 0 of every corruption is the identity (a copy of the input, equal to it). Gaussian noise draws from a
torch.Generator, so results repeat: `corruption_accuracy` seeds a fresh one with `seed` for every (corruption,
severity), so the five severities scale the same noise.

Relative mCE (Hendrycks & Dietterich 2019): with E = 1 - accuracy, for every corruption c the accuracy lost to it,
sum_s (E_c,s - E_clean), divided by the baseline's, sum_s (E_base_c,s - E_base_clean); the mean over corruptions.
Below 1: the model loses less accuracy to corruptions than the baseline.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "blur", "contrast", "jpeg", "pixelate", "brightness")
SEVERITY_PARAMS: dict[str, tuple[float, ...]] = {  # Hendrycks & Dietterich 2019, CIFAR-10-C (see the table above)
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "jpeg": (80, 65, 58, 50, 40),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
}
MODES: tuple[str, ...] = ("cyclic", "pad")
MAX_SEVERITY = 5


# ----------------------------------------------------------------------------------------------------------
# checks


def check_images(images: Tensor) -> None:
    """ValueError unless `images` is a floating (N, 3, H, W) tensor with every value in [0, 1]."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of shape (N, 3, H, W), got {shape}: stack RGB images into one "
                         f"batch")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}: convert 8-bit images with "
                         f"images.float() / 255")
    if images.numel() and not bool(((images >= 0) & (images <= 1)).all()):
        raise ValueError(f"images must lie in [0, 1] (before normalisation), found values in "
                         f"[{images.min().item():.4g}, {images.max().item():.4g}]: pass the images before "
                         f"Normalize, or undo it with x * std + mean")


def _check_severity(name: str, severity: int) -> None:
    if name not in SEVERITY_PARAMS:
        raise ValueError(f"unknown corruption {name!r}: expected one of {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= MAX_SEVERITY:
        raise ValueError(f"severity must be an integer in 0..{MAX_SEVERITY} (0: the input unchanged), got "
                         f"{severity!r}")


def _check_labels(labels: Tensor, n: int) -> None:
    if not isinstance(labels, Tensor) or labels.shape != (n,):
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a tensor of shape (N,) = ({n},), one class index per image, got {shape}")


def _top1(predict: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """predict(x) on CPU, checked to be (N,) class indices."""
    pred = predict(x)
    if not isinstance(pred, Tensor) or pred.shape != (len(x),):
        shape = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
        raise ValueError(f"predict(x) must return top-1 class indices of shape (N,) = ({len(x)},), got {shape}: for "
                         f"logits, return model(normalise(x)).argmax(1)")
    return pred.cpu()


# ----------------------------------------------------------------------------------------------------------
# corruptions


def _blur(x: Tensor, c: float) -> Tensor:
    side = min(x.shape[-2:])
    sigma = c * side / 32  # CIFAR-10-C's sigma is in pixels of a 32x32 image
    k = min(2 * math.ceil(4 * sigma) + 1, 2 * side - 1)  # reflect padding needs radius < side
    return TF.gaussian_blur(x, [k, k], [sigma, sigma])


def _pixelate(x: Tensor, c: float) -> Tensor:
    H, W = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, int(H * c)), max(1, int(W * c))), mode="area")  # (N, 3, h, w): box
    return F.interpolate(small, size=(H, W), mode="nearest-exact")


def _brightness(x: Tensor, c: float) -> Tensor:
    # HSV keeps hue and saturation while V = max(r, g, b) changes, so every channel scales by V' / V; a black
    # pixel (V = 0, saturation 0) becomes the grey V'
    v = x.amax(1, keepdim=True)  # (N, 1, H, W)
    v_new = (v + c).clamp(max=1)
    return torch.where(v > 0, x * (v_new / v.clamp(min=torch.finfo(x.dtype).tiny)), v_new).clamp(0, 1)


def _jpeg(x: Tensor, quality: int) -> Tensor:
    # torchvision's PIL kernel: PIL's encoder, as the reference used (the tensor kernel's torchvision.io codecs are
    # deprecated since torchvision 0.29)
    u8 = (x * 255).round().to(torch.uint8).cpu()  # (N, 3, H, W)
    out = torch.stack([TF.pil_to_tensor(TF.jpeg(TF.to_pil_image(img), int(quality))) for img in u8])
    return out.to(x.device, x.dtype) / 255


def _noise(x: Tensor, c: float, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        generator = torch.Generator(x.device).manual_seed(0)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + c * z).clamp(0, 1)


def corrupt(images: Tensor, name: str, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """`images` (N, 3, H, W) in [0, 1] with corruption `name` at `severity` 0..5 (0: an unchanged copy); the same
    shape, dtype and device, in [0, 1]. `generator` (on the images' device) draws the Gaussian noise; None: one
    seeded with 0. The parameters: this module's docstring."""
    check_images(images)
    _check_severity(name, severity)
    if severity == 0:
        return images.clone()
    c = SEVERITY_PARAMS[name][severity - 1]
    if name == "gaussian_noise":
        return _noise(images, c, generator)
    if name == "blur":
        return _blur(images, c)
    if name == "contrast":
        return TF.adjust_contrast(images, c)
    if name == "jpeg":
        return _jpeg(images, c)
    if name == "pixelate":
        return _pixelate(images, c)
    return _brightness(images, c)


# ----------------------------------------------------------------------------------------------------------
# translation consistency


def shift(images: Tensor, s: int, mode: str, fill: Tensor | None = None) -> Tensor:
    """`images` (N, 3, H, W) moved right by s and down by s pixels. cyclic: rolled; pad: the uncovered top rows and
    left columns take `fill` (3,) (default: zeros)."""
    if mode == "cyclic":
        return torch.roll(images, (s, s), dims=(-2, -1))
    colour = (torch.zeros(3) if fill is None else fill).to(images).view(1, 3, 1, 1)
    out = colour.expand_as(images).clone()  # (N, 3, H, W)
    out[..., s:, s:] = images[..., :-s, :-s]
    return out


def translation_consistency(predict: Callable[[Tensor], Tensor], images: Tensor, max_shift: int = 4,
                            modes: Sequence[str] = MODES, batch_size: int = 64, *,
                            fill: Sequence[float] | None = None) -> dict[str, float]:
    """For each mode and s = 1..max_shift, the fraction of `images` whose top-1 is unchanged when they move right and
    down by s pixels: keys "cyclic_1", ..., "pad_<max_shift>", and "<mode>_mean" (the mean over shifts). `fill`: the
    [0, 1] colour of the pixels the pad mode uncovers (default: the images' mean colour)."""
    check_images(images)
    side = min(images.shape[-2:])
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or not 1 <= max_shift < side:
        raise ValueError(f"max_shift must be an integer >= 1 and smaller than the images' shorter side ({side}), got "
                         f"{max_shift!r}")
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"unknown translation modes {unknown or list(modes)}: expected some of {', '.join(MODES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fill_t = images.mean((0, 2, 3)) if fill is None else torch.as_tensor(fill, dtype=images.dtype)  # (3,)
    if fill_t.shape != (3,):
        raise ValueError(f"fill must be one [0, 1] value per RGB channel (3 values), got {list(fill)}")
    same = {(m, s): 0 for m in modes for s in range(1, max_shift + 1)}
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        ref = _top1(predict, x)
        for m, s in same:
            same[m, s] += int((_top1(predict, shift(x, s, m, fill_t)) == ref).sum())
    n = max(len(images), 1)
    out = {f"{m}_{s}": k / n for (m, s), k in same.items()}
    for m in modes:
        out[f"{m}_mean"] = sum(out[f"{m}_{s}"] for s in range(1, max_shift + 1)) / max_shift
    return out


# ----------------------------------------------------------------------------------------------------------
# corruption accuracy and relative mCE


def corruption_accuracy(predict: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor,
                        corruptions: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = (1, 2, 3, 4, 5),
                        batch_size: int = 64, seed: int = 0) -> dict[str, float]:
    """Top-1 accuracy on `images` (N, 3, H, W) in [0, 1] with `labels` (N,) under every corruption and severity:
    keys "<name>_<severity>", "<name>" (the mean over severities), "clean" (uncorrupted) and "mean" (the mean
    corruption accuracy, over every corruption and severity). The noise repeats for the same seed and batch size."""
    check_images(images)
    _check_labels(labels, len(images))
    if not corruptions or not severities:
        raise ValueError(f"give at least one corruption and one severity, got {list(corruptions)} and "
                         f"{list(severities)}")
    for name in corruptions:
        for sev in severities:
            _check_severity(name, sev)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    labels = labels.cpu()
    hits = {"clean": 0, **{f"{name}_{sev}": 0 for name in corruptions for sev in severities}}
    gens = {key: torch.Generator(images.device).manual_seed(seed) for key in hits}  # one noise stream per key
    for start in range(0, len(images), batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        hits["clean"] += int((_top1(predict, x) == y).sum())
        for name in corruptions:
            for sev in severities:
                key = f"{name}_{sev}"
                hits[key] += int((_top1(predict, corrupt(x, name, sev, gens[key])) == y).sum())
    n = max(len(images), 1)
    out = {k: v / n for k, v in hits.items()}
    for name in corruptions:
        out[name] = sum(out[f"{name}_{sev}"] for sev in severities) / len(severities)
    out["mean"] = sum(out[name] for name in corruptions) / len(corruptions)
    return out


def corruption_keys(result: dict, what: str = "result") -> list[tuple[str, int]]:
    """The (corruption, severity) pairs with an accuracy in `result` (at least one, and "clean"), else a ValueError
    that says what `what` lacks."""
    pairs = [(name, sev) for name in CORRUPTIONS for sev in range(1, MAX_SEVERITY + 1) if f"{name}_{sev}" in result]
    if not pairs or "clean" not in result:
        raise ValueError(f"{what} has no corruption results (expected keys like 'clean' and 'gaussian_noise_1', as "
                         f"corruption_accuracy or `swinkit eval --robustness --json` write them), found keys "
                         f"{sorted(result)[:12]}")
    return pairs


def relative_mce(result: dict, baseline: dict) -> float:
    """Hendrycks & Dietterich's relative mCE of `result` against `baseline` (both as corruption_accuracy returns):
    the mean over corruptions of sum_s (E_c,s - E_clean) / sum_s (E_base_c,s - E_base_clean), E = 1 - accuracy.
    A corruption under which the baseline lost no accuracy (a zero denominator) is left out with a warning; nan
    when that leaves none."""
    pairs = corruption_keys(result, "result")
    missing = [f"{n}_{s}" for n, s in pairs if f"{n}_{s}" not in baseline]
    corruption_keys(baseline, "baseline")
    if missing:
        raise ValueError(f"the baseline lacks {missing}: evaluate it on the same corruptions and severities")
    ratios, skipped = [], []
    for name in dict.fromkeys(n for n, _ in pairs):
        sevs = [s for n, s in pairs if n == name]
        # (1 - acc_c,s) - (1 - acc_clean) = acc_clean - acc_c,s
        num = sum(result["clean"] - result[f"{name}_{s}"] for s in sevs)
        den = sum(baseline["clean"] - baseline[f"{name}_{s}"] for s in sevs)
        if den == 0:
            skipped.append(name)
        else:
            ratios.append(num / den)
    if skipped:
        warnings.warn(f"relative mCE leaves out {skipped}: the baseline lost no accuracy to them (0 / 0)",
                      stacklevel=2)
    return sum(ratios) / len(ratios) if ratios else float("nan")


def evaluate_robustness(predict: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor, max_shift: int = 4,
                        severities: Sequence[int] = (1, 2, 3, 4, 5), baseline: dict | None = None,
                        batch_size: int = 64, seed: int = 0, *, fill: Sequence[float] | None = None) -> dict:
    """translation_consistency (both modes, shifts 1..max_shift) and corruption_accuracy (every corruption) in one
    flat dict, with "relative_mce" against `baseline` (a dict with corruption results) when given."""
    out = {**translation_consistency(predict, images, max_shift, MODES, batch_size, fill=fill),
           **corruption_accuracy(predict, images, labels, CORRUPTIONS, severities, batch_size, seed)}
    if baseline is not None:
        out["relative_mce"] = relative_mce(out, baseline)
    return out


def evaluate_robustness_batches(predict: Callable[[Tensor], Tensor], batches: Iterable[tuple[Tensor, Tensor]],
                                max_shift: int = 4, severities: Sequence[int] = (1, 2, 3, 4, 5),
                                baseline: dict | None = None, seed: int = 0, *,
                                fill: Sequence[float] | None = None) -> dict:
    """evaluate_robustness over (images, labels) batches (a DataLoader), never holding more than one batch: every
    number is a mean over images, so the batch means weighted by batch size are the whole set's. The noise of batch
    i is seeded with seed + i; `fill` None: each batch's mean colour."""
    sums, n = {}, 0
    for i, (x, y) in enumerate(batches):
        r = evaluate_robustness(predict, x, y, max_shift, severities, batch_size=max(len(x), 1), seed=seed + i,
                                fill=fill)
        sums = {k: sums.get(k, 0.0) + v * len(x) for k, v in r.items()}
        n += len(x)
    out = {k: v / n for k, v in sums.items()}
    if baseline is not None:
        out["relative_mce"] = relative_mce(out, baseline)
    return out


def format_robustness(result: dict) -> str:
    """A readable table of a robustness dict (evaluate_robustness's keys), in percent."""
    lines = []
    for m in MODES:
        shifts = sorted(int(k.rsplit("_", 1)[1]) for k in result if k.startswith(f"{m}_") and k[len(m) + 1:].isdigit())
        if shifts:
            if not lines:
                lines.append("translation consistency (top-1 unchanged after moving right and down by s pixels)")
                lines.append(f"{'mode':<16}" + "".join(f"{f's={s}':>8}" for s in shifts) + f"{'mean':>8}")
            lines.append(f"{m:<16}" + "".join(f"{100 * result[f'{m}_{s}']:>7.1f}%" for s in shifts)
                         + f"{100 * result[f'{m}_mean']:>7.1f}%")
    names = [n for n in CORRUPTIONS if n in result]
    if names:
        sevs = sorted({s for n in names for s in range(1, MAX_SEVERITY + 1) if f"{n}_{s}" in result})
        lines.append(f"corruption accuracy (clean {100 * result['clean']:.1f}%)")
        lines.append(f"{'corruption':<16}" + "".join(f"{f'sev {s}':>8}" for s in sevs) + f"{'mean':>8}")
        for n in names:
            lines.append(f"{n:<16}" + "".join(f"{100 * result[f'{n}_{s}']:>7.1f}%" for s in sevs)
                         + f"{100 * result[n]:>7.1f}%")
        lines.append(f"mean corruption accuracy {100 * result['mean']:.2f}%")
    if "relative_mce" in result:
        lines.append(f"relative mCE {result['relative_mce']:.3f} (1: loses as much accuracy to corruptions as the "
                     f"baseline)")
    return "\n".join(lines)
