"""Video classification: clip folders (video files or folders of frames) or the embedded moving digits, frame
sampling and transforms v2 on whole clips, a Video Swin classifier, top-1/top-5 with multi-view testing, and top-k
class predictions per clip.

A dataset root holds `train/<class>/<clip>` and `val/<class>/<clip>`; a clip is a video file (decoded with PyAV:
`pip install swinkit[video]`) or a folder of frames (sorted by name). Sampling follows mmaction's SampleFrames, as
the official Video Swin configs use it: `frames` frames every `frame_stride`-th, from a random offset in training
and from evenly spread offsets in testing; a clip shorter than that is looped (indices wrap around). Testing
averages the softmax over `test_clips` temporal x `test_crops` spatial views (1 centre crop, or 3 along the long
side). With no --data, a motion task trains: scikit-learn's 8x8 digits moving in one of 8 directions.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..config import VIDEO_VARIANTS, VideoSwinConfig
from ..data import IMAGENET_MEAN, IMAGENET_STD, load_image
from ..io.files import dumps
from ..models.video import VideoSwinTransformer
from .base import AMP_DTYPES, Loaded, Task, TaskSettings, setting
from ..metrics.classification import evaluate as evaluate_classification, save_confusion_png

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
ARCH_KEYS = ("patch_size", "window_size", "embed_dim", "depths", "num_heads", "drop_path_rate")
DIRECTIONS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")  # the moving digits' classes, clockwise from up


# ----------------------------------------------------------------------------------------------------------
# clip files


def import_av():
    """PyAV, imported when a video file is first read (frame folders do not need it)."""
    try:
        import av
    except ImportError as e:
        raise ImportError("reading video files needs PyAV: pip install swinkit[video] (or give clips as folders "
                          "of frames)") from e
    return av


def is_clip(path: Path) -> bool:
    """A video file by extension, or a folder (of frames)."""
    if path.name.startswith("."):
        return False
    return path.is_dir() or path.suffix.lower() in VIDEO_EXTENSIONS


def frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and not p.name.startswith("."))


def probe_clip(path: Path) -> tuple[int, str | None]:
    """(frame count, None) for a readable clip, else (0, the reason). Cheap: a video's first frame is decoded and
    its frame count read from the header (counted from the packets when the header has none); a frame folder's
    frames are counted and its first frame decoded."""
    try:
        if path.is_dir():
            frames = frame_files(path)
            if not frames:
                return 0, f"no frames ({', '.join(FRAME_EXTENSIONS)}) in the folder"
            load_image(frames[0])
            return len(frames), None
        av = import_av()
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0, "no video stream"
            stream = container.streams.video[0]
            if next(container.decode(stream), None) is None:
                return 0, "no decodable frame"
            n = stream.frames
        if not n:
            with av.open(str(path)) as container:
                n = sum(1 for p in container.demux(container.streams.video[0]) if p.size)
        return n, None
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this clip"
        return 0, f"{type(e).__name__}: {e}"


def training_clips(data: str | Path) -> list[Path]:
    """The clips of a training root (`data/train/<class>/<clip>`, or `data/<class>/<clip>`), sorted; [] when there
    is no such folder."""
    root = Path(data) / "train" if (Path(data) / "train").is_dir() else Path(data)
    if not root.is_dir():
        return []
    return sorted(p for c in root.iterdir() if c.is_dir() and not c.name.startswith(".") for p in c.iterdir()
                  if is_clip(p))


def frame_size(path: Path) -> tuple[int, int] | None:
    """(H, W) of a clip's first frame, or None when it does not read."""
    try:
        return tuple(read_clip(path, [0]).shape[-2:])
    except (OSError, ValueError, ImportError):
        return None


def read_video(path: Path, indices: list[int]) -> torch.Tensor:
    """Frames `indices` of a video file -> (len(indices), 3, H, W) uint8 RGB, decoded from the start to the last
    index. Indices past the end (when the header's frame count overstates) wrap around the frames decoded."""
    av = import_av()
    wanted, last, got, n = set(indices), max(indices), {}, 0
    try:
        with av.open(str(path)) as container:
            for n, frame in enumerate(container.decode(video=0), 1):
                if n - 1 in wanted:
                    got[n - 1] = frame.to_ndarray(format="rgb24")  # (H, W, 3)
                if n > last:
                    break
    except av.error.FFmpegError as e:
        raise ValueError(f"{path}: {e}") from e
    if n == 0:
        raise ValueError(f"{path}: no decodable frame")
    if len(got) < len(wanted):
        return read_video(path, [i % n for i in indices])
    return torch.from_numpy(np.stack([got[i] for i in indices])).permute(0, 3, 1, 2)  # (N, 3, H, W)


def read_clip(path: Path, indices: list[int]) -> torch.Tensor:
    """Frames `indices` of a clip (video file or frame folder) -> (len(indices), 3, H, W) uint8 RGB."""
    if not path.is_dir():
        return read_video(path, indices)
    files = frame_files(path)
    loaded = {i: np.asarray(load_image(files[i])) for i in set(indices)}
    return torch.from_numpy(np.stack([loaded[i] for i in indices])).permute(0, 3, 1, 2)  # (N, 3, H, W)


# ----------------------------------------------------------------------------------------------------------
# sampling and transforms


def frames_needed(frames: int, stride: int) -> int:
    """Source frames that one clip of `frames` frames every `stride`-th covers without looping."""
    return (frames - 1) * stride + 1


def sample_indices(num_frames: int, frames: int, stride: int, clips: int = 1, train: bool = False) -> torch.Tensor:
    """(clips, frames) frame indices, as mmaction's SampleFrames: a clip spans frames x stride source frames from an
    offset that is random in training (drawn from torch's default generator, one clip) and evenly spread over the
    video in testing (the middle of `clips` equal parts); indices past the end wrap around (a short clip loops)."""
    span = frames * stride
    if train:
        offsets = torch.randint(max(num_frames - span, 0) + 1, (1,))
    elif num_frames >= span:
        part = (num_frames - span + 1) / clips
        offsets = (torch.arange(clips) * part + part / 2).long()
    else:
        offsets = torch.zeros(clips, dtype=torch.long)
    return (offsets[:, None] + torch.arange(frames) * stride) % num_frames


class TrainClip:
    """uint8 Video (T, 3, H, W) -> (1, T, 3, S, S) float: a random resized crop and flip shared by all frames,
    normalised. `scale` (1, 1) turns the crop off (resize the short side to S, centre crop)."""

    def __init__(self, img_size: int, scale=(0.08, 1.0), hflip: float = 0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        crop = [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)] if tuple(scale) == (1, 1) else \
            [v2.RandomResizedCrop(img_size, scale=tuple(scale), antialias=True)]
        flip = [v2.RandomHorizontalFlip(hflip)] if hflip > 0 else []
        self.tf = v2.Compose([*crop, *flip, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def __call__(self, video: tv_tensors.Video) -> torch.Tensor:
        return self.tf(video).as_subclass(torch.Tensor)[None]


class EvalViews:
    """uint8 Video (T, 3, H, W) -> (crops, T, 3, S, S) float: the short side resized to S / crop_pct, then `crops`
    crops of S x S: the centre (1), or the start, centre and end of the long side (3, mmaction's ThreeCrop)."""

    def __init__(self, img_size: int, crop_pct: float = 0.875, crops: int = 1, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD):
        if crops not in (1, 3):
            raise ValueError(f"test crops must be 1 (centre) or 3 (along the long side), got {crops}")
        self.size, self.resize, self.crops = img_size, max(img_size, round(img_size / crop_pct)), crops
        self.norm = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def __call__(self, video: tv_tensors.Video) -> torch.Tensor:
        video = v2.functional.resize(video, self.resize, antialias=True)  # short side
        H, W, s = *video.shape[-2:], self.size
        if self.crops == 1:
            corners = [((H - s) // 2, (W - s) // 2)]
        elif W >= H:
            corners = [((H - s) // 2, left) for left in (0, (W - s) // 2, W - s)]
        else:
            corners = [(top, (W - s) // 2) for top in (0, (H - s) // 2, H - s)]
        crops = [v2.functional.crop(video, top, left, s, s) for top, left in corners]
        return torch.stack([self.norm(c).as_subclass(torch.Tensor) for c in crops])  # (crops, T, 3, s, s)


# ----------------------------------------------------------------------------------------------------------
# datasets


class ClipDataset(Dataset):
    """Clips -> (video, class index). A video is (C, T, H, W) float, or (V, C, T, H, W) for V = clips x crops > 1
    test views (clip-major). Subclasses give `classes`, `lengths` (frames per clip), `targets` and `read`.

    `transform` maps a uint8 Video (T, 3, H, W) to (crops, T, 3, S, S) (TrainClip: 1 view; EvalViews); without
    one, a sample is the sampled frames as they are, (clips x T, 3, H, W) uint8. `train` draws one random clip per
    sample, else `clips` evenly spread ones."""

    classes: list[str]
    lengths: list[int]
    targets: list[int]

    def __init__(self, frames: int, stride: int, clips: int = 1, train: bool = False, transform=None):
        if frames < 1 or stride < 1 or clips < 1:
            raise ValueError(f"frames, frame stride and test clips must be >= 1, got {frames}, {stride}, {clips}")
        self.frames, self.stride, self.clips, self.train, self.transform = frames, stride, clips, train, transform

    def read(self, index: int, indices: list[int]) -> torch.Tensor:
        """Frames `indices` of clip `index` -> (N, 3, H, W) uint8 (raises OSError / ValueError if unreadable)."""
        raise NotImplementedError

    def describe_clip(self, index: int) -> str:
        return f"clip {index}"

    def looped(self) -> list[int]:
        """Indices of the clips shorter than one sampled clip spans (they loop)."""
        need = frames_needed(self.frames, self.stride)
        return [i for i, n in enumerate(self.lengths) if n < need]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        """A clip that stopped decoding since the dataset was built is replaced by the next one, with a warning."""
        self.targets[index]  # IndexError past the end, as iteration expects
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            idx = sample_indices(self.lengths[i], self.frames, self.stride, self.clips, self.train)  # (clips, T)
            try:
                video = self.read(i, idx.flatten().tolist())  # (clips * T, 3, H, W)
                break
            except (OSError, ValueError) as e:
                warnings.warn(f"could not read {self.describe_clip(i)} ({e}); using the next clip instead",
                              stacklevel=2)
        else:
            raise RuntimeError(f"no clip of this dataset can be read (the last one tried: {self.describe_clip(i)})")
        if self.transform is None:
            return video, self.targets[i]
        views = torch.cat([self.transform(tv_tensors.Video(c)) for c in video.split(self.frames)])  # (V, T, C, S, S)
        views = views.transpose(1, 2)  # (V, C, T, S, S)
        return (views[0] if len(views) == 1 else views), self.targets[i]


class VideoFolder(ClipDataset):
    """`root/<class>/<clip>` clips: video files (VIDEO_EXTENSIONS) or frame folders (FRAME_EXTENSIONS). Each clip is
    probed once (probe_clip: cheap, in threads): unreadable ones are skipped and listed in `.skipped` as (path,
    reason), with one warning naming them; clips shorter than one sampled clip are counted in `.looped()` and warned
    about. `classes` (from another split) fixes the class order; a class folder unknown to it is an error."""

    def __init__(self, root: str | Path, frames: int, stride: int, clips: int = 1, train: bool = False,
                 transform=None, classes: list[str] | None = None, classes_from: str = "the training set"):
        super().__init__(frames, stride, clips, train, transform)
        self.root = Path(root)
        layout = "one sub-folder per class holding clips (video files or folders of frames)"
        if not self.root.is_dir():
            raise FileNotFoundError(f"expected a clip folder at {self.root} ({layout}), but it does not exist")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not found:
            raise FileNotFoundError(f"expected {layout} in {self.root}, found no sub-folders")
        if classes is not None and set(found) - set(classes):
            raise ValueError(f"{self.root} has class folders that {classes_from} does not have: "
                             f"{sorted(set(found) - set(classes))}; expected only its classes {list(classes)}. "
                             "Rename or remove those folders")
        self.classes = list(classes) if classes is not None else found
        candidates = [(p, self.classes.index(c)) for c in found for p in sorted((self.root / c).iterdir())
                      if is_clip(p)]
        if any(not p.is_dir() for p, _ in candidates):
            import_av()  # a missing PyAV is an error to fix, not a reason to skip every video
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            probes = list(pool.map(lambda s: probe_clip(s[0]), candidates))
        self.skipped = [(str(p), r) for (p, _), (_, r) in zip(candidates, probes) if r is not None]
        kept = [(s, n) for s, (n, r) in zip(candidates, probes) if r is None]
        self.samples = [s for s, _ in kept]
        self.lengths, self.targets = [n for _, n in kept], [t for _, t in self.samples]
        present = set(self.targets)
        empty = [c for c in found if self.classes.index(c) not in present]
        if empty:
            raise ValueError(f"class folder(s) {empty} in {self.root} hold no readable clips (video files "
                             f"{', '.join(VIDEO_EXTENSIONS)} or folders of {', '.join(FRAME_EXTENSIONS)} frames); add "
                             "clips or remove the folder(s)")
        self._warn()

    def _warn(self) -> None:
        def listed(items: list[str]) -> str:
            return "\n".join(f"  {s}" for s in items[:5]) + ("\n  ..." if len(items) > 5 else "")

        if self.skipped:
            warnings.warn(f"skipped {len(self.skipped)} unreadable clip(s) in {self.root}:\n"
                          + listed([f"{p}: {r}" for p, r in self.skipped]), stacklevel=3)
        looped = self.looped()
        if looped:
            warnings.warn(f"{len(looped)} clip(s) in {self.root} have fewer than the "
                          f"{frames_needed(self.frames, self.stride)} frames that {self.frames} frames at stride "
                          f"{self.stride} span; they loop:\n"
                          + listed([f"{self.samples[i][0]} ({self.lengths[i]} frames)" for i in looped]), stacklevel=3)

    def describe_clip(self, index: int) -> str:
        return str(self.samples[index][0])

    def read(self, index: int, indices: list[int]) -> torch.Tensor:
        return read_clip(self.samples[index][0], indices)


# ---- the embedded default: scikit-learn's digits in motion


def moving_digit(digit: np.ndarray, start: tuple[int, int], step: tuple[int, int], frames: int,
                 canvas: int) -> np.ndarray:
    """One (frames, canvas, canvas) uint8 clip: `digit` (h, w) pasted at `start` (y, x) + t * `step` on black."""
    h, w = digit.shape
    out = np.zeros((frames, canvas, canvas), np.uint8)
    for t in range(frames):
        y, x = start[0] + t * step[0], start[1] + t * step[1]
        out[t, y:y + h, x:x + w] = digit
    return out


class MovingDigits(ClipDataset):
    """scikit-learn's 1,797 handwritten 8x8 digits, each sample one digit moving in one of the 8 DIRECTIONS (the
    class) at `speeds` pixels per frame and axis over `length` frames on a black `canvas` square, from a start drawn
    uniformly among those that keep it inside. A frame alone does not tell the class: the same digit at the same
    place starts every direction, and a clip played backwards is one of the opposite direction.

    Deterministic given `seed`: the digits are split by image (a seeded 20% are val's, unseen in training), and
    each sample's digit, speed and start are drawn once. Classes are balanced (sample i moves DIRECTIONS[i % 8]) and
    every digit used moves in all 8 directions."""

    def __init__(self, split: str, samples: int, frames: int, stride: int = 1, clips: int = 1, train: bool = False,
                 transform=None, length: int = 8, canvas: int = 32, speeds=(2, 3), seed: int = 0,
                 val_fraction: float = 0.2):
        super().__init__(frames, stride, clips, train, transform)
        from sklearn.datasets import load_digits

        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if canvas < 8 + max(speeds) * (length - 1):
            raise ValueError(f"a {canvas}x{canvas} canvas cannot hold an 8x8 digit moving {max(speeds)} px a frame "
                             f"for {length} frames; enlarge it to {8 + max(speeds) * (length - 1)} or lower them")
        images = load_digits().images  # (1797, 8, 8), values 0..16
        self.digits = np.round(images * (255 / 16)).astype(np.uint8)
        order = np.random.default_rng(seed).permutation(len(images))
        n_val = round(val_fraction * len(images))
        pool = order[:n_val] if split == "val" else order[n_val:]
        rng = np.random.default_rng([seed, 1 if split == "val" else 0])
        pool = rng.permutation(pool)
        self.classes, self.length, self.canvas = list(DIRECTIONS), length, canvas
        self.targets = [i % 8 for i in range(samples)]
        self.digit_index = [int(pool[(i // 8) % len(pool)]) for i in range(samples)]
        self.steps, self.starts = [], []
        for t in self.targets:
            speed = int(rng.choice(speeds))
            step = tuple(speed * d for d in direction_unit(DIRECTIONS[t]))
            travel = [s * (length - 1) for s in step]
            self.starts.append(tuple(int(rng.integers(max(0, -d), canvas - 8 - max(0, d) + 1)) for d in travel))
            self.steps.append(step)
        self.lengths = [length] * samples

    def describe_clip(self, index: int) -> str:
        return f"moving digit {index}"

    def read(self, index: int, indices: list[int]) -> torch.Tensor:
        clip = moving_digit(self.digits[self.digit_index[index]], self.starts[index], self.steps[index], self.length,
                            self.canvas)
        return torch.from_numpy(clip[indices])[:, None].expand(-1, 3, -1, -1)  # (N, 3, H, W), gray as RGB


def direction_unit(name: str) -> tuple[int, int]:
    """A compass direction's (dy, dx) unit step; rows grow downwards, so N is (-1, 0)."""
    return (-1 if "N" in name else 1 if "S" in name else 0), (1 if "E" in name else -1 if "W" in name else 0)


def split_root(data: str | Path) -> tuple[Path, Path]:
    root = Path(data)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise FileNotFoundError(f"--data {root}: expected train/ and val/ folders, each with one sub-folder per "
                                "class of clips (video files or folders of frames)")
    return root / "train", root / "val"


def eval_folder(data: str | Path) -> Path:
    """`data/val` when it exists (a training root), else `data` itself."""
    root = Path(data)
    return root / "val" if (root / "val").is_dir() else root


# ----------------------------------------------------------------------------------------------------------
# metrics and predictions


def view_log_probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) or (B, V, C, T, H, W) views -> (B, classes) log of the views' mean softmax (the official
    test_cfg average_clips='prob'). Views run in chunks of B clips."""
    B = len(x)
    views = x.flatten(0, 1) if x.ndim == 6 else x  # (B * V, C, T, H, W)
    logits = torch.cat([model(c).float() for c in views.split(B)])  # (B * V, classes)
    log_p = logits.log_softmax(-1).view(B, -1, logits.shape[-1])  # (B, V, classes)
    return log_p.logsumexp(1) - math.log(log_p.shape[1])


def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None = None,
             num_classes: int | None = None) -> dict:
    """Loss (NLL of the views' mean softmax; cross-entropy for one view), top-1 and top-5 (%) over `loader`,
    summed across ranks when distributed: classify.evaluate on view_log_probs. Top-5 only with 5 or more classes
    (it would be 100% by construction otherwise). With `num_classes`, also the (C, C) confusion matrix."""
    classes = []  # the class count of the model's outputs

    def log_probs(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        log_p = view_log_probs(m, x)  # (B, classes)
        classes.append(log_p.shape[1])
        return log_p

    out = evaluate_classification(model, loader, device, amp_dtype, num_classes, log_probs, "num_videos")
    if classes and classes[0] < 5:
        del out["top5"]
    return out


@torch.no_grad()
def predict(model: nn.Module, views: torch.Tensor, class_names: list[str], topk: int = 5) -> list[dict]:
    """One clip's views (V, C, T, H, W) -> its top-k [{"class", "index", "prob"}] of the views' mean softmax."""
    p, idx = view_log_probs(model, views[None])[0].exp().topk(min(topk, len(class_names)))
    return [{"class": class_names[i], "index": i, "prob": q} for q, i in zip(p.tolist(), idx.tolist())]


# ----------------------------------------------------------------------------------------------------------
# settings and recipes


@dataclass
class VideoSettings(TaskSettings):
    """Video classification settings; the defaults are the official Video Swin recipe's data pipeline."""
    data: str | None = setting(None, "clip folder: train/ and val/, each with one sub-folder per class of clips "
                                     "(video files or folders of frames; default: the embedded moving digits)")
    model: str = setting("video_swin_t", "video variant name: " + ", ".join(VIDEO_VARIANTS))
    pretrained: str | None = setting(None, "start from these weights: a video checkpoint, or a 2-D (image) one "
                                           "inflated to 3-D; PATH or run directory (head re-initialised)")
    inflate: str = setting("average", "2-D --pretrained: patch embedding over time as I3D's average (official) or "
                                      "all in the centre frame", choices=["average", "center"])
    # sampling (also stored for `swinkit eval` / `predict`)
    frames: int | None = setting(None, "frames per clip, T (default: the model's)")
    frame_stride: int = setting(2, "take every N-th frame", valid=">= 1")
    img_size: int | None = setting(None, "crop size (default: the model's)")
    test_clips: int = setting(4, "swinkit eval / predict: temporal clips per video, softmax averaged (validation "
                                 "during training: 1)")
    test_crops: int = setting(3, "swinkit eval / predict: spatial crops per clip, 1 centre or 3 along the long side "
                                 "(validation during training: 1 centre)", choices=[1, 3])
    # model overrides (None: the variant's)
    patch_size: list[int] | None = setting(None, "patch t h w", nargs=3)
    window_size: list[int] | None = setting(None, "window t h w of every stage", nargs=3)
    embed_dim: int | None = setting(None)
    depths: list[int] | None = setting(None, nargs="+")
    num_heads: list[int] | None = setting(None, nargs="+")
    drop_path_rate: float | None = setting(None, "stochastic depth (default: the variant's)")
    # augmentation
    scale: list[float] = setting([0.08, 1.0], "random-resized-crop area range (1 1: no crop)", nargs=2)
    hflip: float = setting(0.5, "horizontal flip probability (0 for direction-sensitive classes)", valid="0..1")
    crop_pct: float = setting(0.875, "eval: resize the short side to img_size / crop_pct, then crop", valid="(0, 1]")


_DIGITS = dict(model="video_swin_t", embed_dim=32, depths=[2, 2], num_heads=[2, 4], patch_size=[2, 4, 4],
               window_size=[2, 4, 4], drop_path_rate=0.0, frames=8, frame_stride=1, img_size=32, test_clips=1,
               test_crops=1, scale=[1.0, 1.0], hflip=0.0, crop_pct=1.0, epochs=10, warmup_epochs=1, batch_size=32,
               lr=2e-3, lr_base_size=32, warmup_lr=2e-6, min_lr=2e-5, weight_decay=0.05, clip_grad=5.0)
RECIPES: dict[str, dict[str, Any]] = {
    # configs/recognition/swin/swin_*_patch244_window877_kinetics400_1k.py of the official Video-Swin-Transformer:
    # AdamW lr 1e-3, weight decay 0.02, linear warmup over 2.5 epochs from 0.1 x lr (mmcv's warmup ratio), cosine to
    # 0, 30 epochs, no clipping; 8 clips per GPU on 8 GPUs with update_interval 4, i.e. 256 clips per update (the
    # paper says a batch of 64); drop path from the variant (T 0.1, S 0.2, B 0.3). It fine-tunes ImageNet weights
    # with the backbone's lr x 0.1 (1 when training from scratch: see resolve).
    "default": dict(epochs=30, warmup_epochs=2.5, lr=1e-3, lr_base_size=256, warmup_lr=1e-4, min_lr=0.0,
                    weight_decay=0.02, clip_grad=0.0, batch_size=8, backbone_lr_scale=0.1),
    # the embedded moving digits on a 2-core CPU: 8 frames of 32x32, a two-stage C 32 model (0.14M params), temporal
    # patch 2 and window 2; no flip (it would swap E and W) and no crop. Measured (shared 2-core CPU): 92.0% val top-1
    # after 6 epochs, 97.9% after 10, in 166 s
    "digits": _DIGITS,
    # the ablation: temporal patch 1 and window 1, so no token sees another frame (bag of frames): 12.5% val top-1
    # after 10 epochs (chance), 315 s
    "digits-static": {**_DIGITS, "patch_size": [1, 4, 4], "window_size": [1, 4, 4]},
}
# clips from scratch with no --pretrained: the moving digits' model and schedule, with flips and mild crops for
# natural clips, at the clips' own size (small_size) instead of 224 px
RECIPES["small"] = {**_DIGITS, "img_size": None, "hflip": 0.5, "scale": [0.8, 1.0], "epochs": 30, "test_crops": 1}
SMALL_DATA_CLIPS = 10_000  # from scratch on fewer clips than this (and no --recipe), the small recipe is picked
DIGITS_SAMPLES = {"train": 4096, "val": 1024}


def small_size(frame: tuple[int, int] | None) -> int:
    """The small recipe's crop: the clips' short side rounded down to a multiple of 16 (patch 4 x window 4), between
    16 and 64 (32 when the size is unknown)."""
    return 32 if frame is None else max(16, min(64, min(frame) // 16 * 16))


# ----------------------------------------------------------------------------------------------------------
# the task


class VideoTask(Task):
    """Classify clips into the class folders of --data (or the moving digits into their 8 directions)."""

    name = "video"
    primary_metric = "top1"
    Settings = VideoSettings
    recipes = RECIPES
    default_recipe = "default"
    plot_metrics = ("top1", "top5")

    # ---- settings

    @classmethod
    def choose_recipe(cls, given: dict) -> tuple[str, str | None]:
        """digits with no --data, default with --pretrained or a model chosen by flags; from scratch on small
        clips (short side under 112 px) or fewer than SMALL_DATA_CLIPS clips, small."""
        if not given.get("data"):
            return "digits", None
        if given.get("pretrained"):
            return "default", None
        hint = ("hint: the official Video Swin recipe fine-tunes ImageNet weights (--pretrained, a 2-D checkpoint is "
                "inflated); from scratch it needs Kinetics-scale data")
        if any(k in given for k in ("model", *ARCH_KEYS)):
            return "default", hint
        clips = training_clips(given["data"])
        size = frame_size(clips[0]) if clips else None
        if not clips or (size and min(size) >= 112 and len(clips) >= SMALL_DATA_CLIPS):
            return "default", hint
        what = f"{len(clips)} clips" + (f" of {size[0]}x{size[1]} px" if size else "")
        return "small", (f"recipe small: {what} from scratch: a two-stage Video Swin of 0.14M parameters at "
                         f"{small_size(size)} px and 8 frames (the default recipe builds Video Swin-T at 32x224x224 "
                         "for Kinetics). --recipe default keeps the default one")

    @classmethod
    def resolve(cls, flat: dict, given: dict) -> dict:
        """frames and img_size from the variant when not set, so config.json states them; the backbone's lr at
        full scale when there is no --pretrained backbone to protect."""
        if not flat.get("pretrained") and "backbone_lr_scale" not in given:
            flat["backbone_lr_scale"] = 1.0
        if flat["model"] not in VIDEO_VARIANTS:
            raise ValueError(f"unknown video model {flat['model']!r}; choose one of {list(VIDEO_VARIANTS)}")
        t, h, _ = VideoSwinConfig.from_name(flat["model"]).clip_size
        if flat["recipe"] == "small" and "img_size" not in given:
            clips = training_clips(flat["data"])
            h = small_size(frame_size(clips[0]) if clips else None)
        flat["frames"] = t if flat["frames"] is None else flat["frames"]
        flat["img_size"] = h if flat["img_size"] is None else flat["img_size"]
        small = {k: flat[k] for k in ("frames", "frame_stride", "test_clips", "img_size") if flat[k] < 1}
        if small:
            raise ValueError(f"expected {', '.join('--' + k.replace('_', '-') for k in small)} >= 1, got {small}")
        return flat

    # ---- training

    def build_datasets(self):
        c = self.cfg
        train_tf = TrainClip(c.img_size, c.scale, c.hflip)
        val_tf = EvalViews(c.img_size, c.crop_pct)
        if c.data:
            train_dir, val_dir = split_root(c.data)
            self.train_ds = VideoFolder(train_dir, c.frames, c.frame_stride, train=True, transform=train_tf)
            self.val_ds = VideoFolder(val_dir, c.frames, c.frame_stride, transform=val_tf,
                                      classes=self.train_ds.classes)
        else:
            seed = self.settings.run.seed
            self.train_ds = MovingDigits("train", DIGITS_SAMPLES["train"], c.frames, c.frame_stride, train=True,
                                         transform=train_tf, seed=seed)
            self.val_ds = MovingDigits("val", DIGITS_SAMPLES["val"], c.frames, c.frame_stride, transform=val_tf,
                                       seed=seed)
        self.classes = self.train_ds.classes
        self.data_cfg = {"frames": c.frames, "frame_stride": c.frame_stride, "img_size": c.img_size,
                         "crop_pct": c.crop_pct, "test_clips": c.test_clips, "test_crops": c.test_crops,
                         "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                         "source": str(c.data) if c.data else "moving digits"}
        return self.train_ds, self.val_ds

    def build_model(self, config: dict | None = None) -> VideoSwinTransformer:
        return self.model_from_config(config) if config else self._new_model()

    def _new_model(self) -> VideoSwinTransformer:
        c, n = self.cfg, len(self.classes)
        arch = {k: getattr(c, k) for k in ARCH_KEYS if getattr(c, k) is not None}
        arch["img_size"] = (c.frames, c.img_size, c.img_size)
        if c.pretrained:
            from ..factory import create_video_model

            source = Path(c.pretrained)
            source = source / "best.pt" if (source / "best.pt").is_file() else source
            return create_video_model(c.model, num_classes=n, checkpoint=str(source), inflate=c.inflate, **arch)
        cfg = VideoSwinConfig.from_name(c.model, num_classes=n, **arch)
        if cfg.describe(with_size=False).startswith("custom"):
            cfg.name = "custom"  # a variant's name stays only on the variant's architecture
        return VideoSwinTransformer(cfg)

    def model_config(self, model: VideoSwinTransformer) -> dict:
        return model.cfg.to_dict()

    @classmethod
    def model_from_config(cls, config: dict) -> VideoSwinTransformer:
        return VideoSwinTransformer(VideoSwinConfig.from_dict(config))

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = (t.to(self.env.device, non_blocking=True) for t in batch)
        return F.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        m = evaluate(model, loader, self.env.device, self.env.amp_dtype)
        return {k: m[k] for k in ("loss", "top1", "top5") if k in m}

    def checkpoint_meta(self) -> dict:
        return {"class_names": self.classes, "data": self.data_cfg}

    @classmethod
    def load(cls, path: Path, ck: dict | None) -> Loaded:
        """A swinkit video checkpoint, or any Video Swin file load_model reads (official / mmaction2, torchvision):
        its classes then "0".."C-1", clips sampled as the official recognizers test them (frames of its clip size,
        stride 2, 4 clips x 3 crops)."""
        if ck is not None:
            return super().load(path, ck)
        from ..io.load import load_model

        model = load_model(path)
        t, h, _ = model.cfg.clip_size
        names = getattr(model, "class_names", None) or [str(i) for i in range(model.num_classes)]
        data = {"frames": t, "frame_stride": 2, "img_size": h, "crop_pct": 0.875, "test_clips": 4, "test_crops": 3,
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "source": str(path)}
        return Loaded(cls, model.eval(), {"class_names": list(names), "data": data}, path)

    def summary_extra(self) -> dict:
        datasets = (self.train_ds, self.val_ds)
        return {"skipped_clips": sum(len(getattr(d, "skipped", ())) for d in datasets),
                "looped_clips": sum(len(d.looped()) for d in datasets)}

    def describe_model(self, model: VideoSwinTransformer) -> str:
        return model.cfg.describe()

    def describe_data(self, train, val) -> str:
        extra = self.summary_extra()
        notes = [f"{v} {k.split('_')[0]}" for k, v in extra.items() if v]
        return (f"{len(train)} clips / {len(self.classes)} classes, val {len(val)}; {self.cfg.frames} frames, stride "
                f"{self.cfg.frame_stride}, at {self.cfg.img_size}px" + (f" ({', '.join(notes)})" if notes else ""))

    def describe(self, metrics: dict[str, float]) -> str:
        names = {"top1": "top-1", "top5": "top-5"}
        return "  ".join(f"{names[k]} {v:.2f}%" for k, v in metrics.items() if k in names)

    # ---- eval and predict

    @staticmethod
    def _view_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--test-clips", type=int, help="temporal clips per video (default: the checkpoint's)")
        parser.add_argument("--test-crops", type=int, choices=[1, 3],
                            help="spatial crops per clip: 1 centre or 3 along the long side (default: the "
                                 "checkpoint's)")

    @staticmethod
    def _views(loaded: Loaded, args: argparse.Namespace) -> tuple[int, EvalViews]:
        d = loaded.meta["data"]
        clips = args.test_clips or d["test_clips"]
        if clips < 1:
            raise ValueError(f"--test-clips must be >= 1, got {clips}")
        return clips, EvalViews(d["img_size"], d["crop_pct"], args.test_crops or d["test_crops"], d["mean"], d["std"])

    @classmethod
    def add_eval_arguments(cls, parser: argparse.ArgumentParser) -> None:
        cls._view_arguments(parser)

    @classmethod
    def run_eval(cls, loaded: Loaded, args: argparse.Namespace) -> tuple[dict, str]:
        names, d, device = loaded.meta["class_names"], loaded.meta["data"], torch.device(args.device)
        clips, views = cls._views(loaded, args)
        folder = eval_folder(args.data)
        ds = VideoFolder(folder, d["frames"], d["frame_stride"], clips, transform=views, classes=names,
                         classes_from=f"checkpoint {args.checkpoint}")
        loader = DataLoader(ds, args.batch_size, num_workers=args.workers)
        m = evaluate(loaded.model.to(device), loader, device, AMP_DTYPES[args.amp], num_classes=len(names))
        save_confusion_png(m["confusion"], names, args.confusion)
        how = f"{clips} clip(s) x {views.crops} crop(s)"
        result = {"top1": m["top1"], "top5": m.get("top5"), "loss": m["loss"], "num_videos": m["num_videos"],
                  "num_classes": len(names), "views": how, "skipped_clips": len(ds.skipped),
                  "looped_clips": len(ds.looped()), "checkpoint": str(args.checkpoint), "data": str(folder),
                  "confusion_png": str(args.confusion)}
        top5 = f"  top-5 {m['top5']:.2f}%" if "top5" in m else "  (top-5: fewer than 5 classes)"
        text = (f"{args.checkpoint} on {folder} ({m['num_videos']} videos, {len(names)} classes, {how})\n"
                f"top-1 {m['top1']:.2f}%{top5}  loss {m['loss']:.4f}\nconfusion matrix: {args.confusion}")
        return result, text

    @classmethod
    def add_predict_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--topk", type=int, default=5, help="classes to show per clip")
        cls._view_arguments(parser)

    @classmethod
    def run_predict(cls, loaded: Loaded, args: argparse.Namespace) -> int:
        """Top-k classes per clip (video file or frame folder in args.images), printed or as JSON lines."""
        if args.topk < 1:
            raise ValueError(f"--topk must be >= 1, got {args.topk}")
        names, d, device = loaded.meta["class_names"], loaded.meta["data"], torch.device(args.device)
        clips, views = cls._views(loaded, args)
        model, failed = loaded.model.to(device), 0
        for path in map(Path, args.images):
            n, reason = probe_clip(path) if is_clip(path) else (0, "not a video file "
                                                                   f"({', '.join(VIDEO_EXTENSIONS)}) or frame folder")
            try:
                if reason:
                    raise ValueError(reason)
                idx = sample_indices(n, d["frames"], d["frame_stride"], clips)  # (clips, T)
                video = read_clip(path, idx.flatten().tolist())  # (clips * T, 3, H, W)
            except (OSError, ValueError) as e:
                failed += 1
                print(f"error: cannot read {path}: {e}", file=sys.stderr)
                continue
            x = torch.cat([views(tv_tensors.Video(c)) for c in video.split(d["frames"])])  # (V, T, C, S, S)
            top = predict(model, x.transpose(1, 2).to(device), names, args.topk)  # views (V, C, T, S, S)
            if args.json:
                print(dumps({"clip": str(path), "frames": n, "views": len(x), "predictions": top}))
            else:
                print(f"{path}: " + ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in top))
        return 1 if failed else 0
