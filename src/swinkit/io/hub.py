"""Released weights: where each variant's are (the official repositories, torchvision, the SwinIR releases), and
downloading them once into torch.hub's cache, checked against their checksums."""
from __future__ import annotations

import hashlib
import sys
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..config import ALIASES, SWINIR_VARIANTS
from .files import CheckpointError


# ----------------------------------------------------------------------------------------------------------
# official pretrained weights


_GH = "https://github.com/SwinTransformer/storage/releases/download/"


# name -> (URL, checksum). The official MODELHUB.md publishes URLs but no checksums; the one given is the
# sha384 that OpenVINO's Open Model Zoo (models/public/swin-tiny-patch4-window7-224/model.yml) records for
# the same URL. Files without one are reported with their sha256 after download.
PRETRAINED = {
    "swin_tiny_patch4_window7_224": (_GH + "v1.0.0/swin_tiny_patch4_window7_224.pth",
                                     "sha384:210021216e1f205617d885836b1ac59d725b8c41dbff8dc4c513e838911436b0b75e06"
                                     "529737e472d3167519a7c1a6ad"),
    "swin_small_patch4_window7_224": (_GH + "v1.0.0/swin_small_patch4_window7_224.pth", None),
    "swin_base_patch4_window7_224": (_GH + "v1.0.0/swin_base_patch4_window7_224.pth", None),
    "swin_large_patch4_window7_224": (_GH + "v1.0.0/swin_large_patch4_window7_224_22kto1k.pth", None),
    "swin_base_patch4_window12_384": (_GH + "v1.0.0/swin_base_patch4_window12_384.pth", None),
    "swin_large_patch4_window12_384": (_GH + "v1.0.0/swin_large_patch4_window12_384_22kto1k.pth", None),
    **{f"swinv2_{s}_window{w}_256": (_GH + f"v2.0.0/swinv2_{s}_patch4_window{w}_256.pth", None)
       for w in (8, 16) for s in ("tiny", "small", "base")},
    **{f"swinv2_{s}_window12_192": (_GH + f"v2.0.0/swinv2_{s}_patch4_window12_192_22k.pth", None)
       for s in ("base", "large")},
    **{f"swinv2_{s}_window12to{w}_192to{r}": (_GH + f"v2.0.0/swinv2_{s}_patch4_window12to{w}_192to{r}_22kto1k_ft.pth",
                                              None) for s in ("base", "large") for w, r in ((16, 256), (24, 384))},
}


_PT = "https://download.pytorch.org/models/"


# video name -> (URL, checksum): torchvision's Kinetics-400 ports of the official Video Swin weights (swin3d_t / s /
# b; B pre-trained on ImageNet-1k). torch.hub names its files after the first digits of their sha256, checked here.
VIDEO_PRETRAINED = {
    "video_swin_t": (_PT + "swin3d_t-7615ae03.pth", "sha256:7615ae03"),
    "video_swin_s": (_PT + "swin3d_s-da41c237.pth", "sha256:da41c237"),
    "video_swin_b": (_PT + "swin3d_b_1k-24f7c7c6.pth", "sha256:24f7c7c6"),
}


_SWINIR = "https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/"


# restoration name -> (URL, checksum): the official SwinIR model zoo (no published checksums). The Swin2SR variants
# have no entry: their weights are transformers directories (load them with checkpoint=DIR).
RESTORATION_PRETRAINED = {n: (_SWINIR + v["file"], None) for n, v in SWINIR_VARIANTS.items()
                          if v["file"].endswith(".pth")}


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_pretrained(name: str, url: str | None = None) -> Path:
    """The official weights of variant `name` (or `url`), downloaded once through torch.hub into its cache
    (torch.hub.get_dir()/checkpoints) and checked against the known checksum."""
    name = ALIASES.get(name, name)
    releases = {**PRETRAINED, **VIDEO_PRETRAINED, **RESTORATION_PRETRAINED}
    checksum = None
    if url is None:
        if name not in releases:
            raise CheckpointError(f"no public weights for {name!r}; variants with weights: {', '.join(releases)}")
        url, checksum = releases[name]
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    maker = ("create_video_model" if name in VIDEO_PRETRAINED else
             "create_restoration_model" if name in RESTORATION_PRETRAINED else "create_model")
    try:
        torch.hub.download_url_to_file(url, str(path), progress=sys.stderr.isatty())
    except OSError as e:  # URLError, HTTPError, connection refused, no DNS
        raise CheckpointError(
            f"could not download the {name} weights from {url} ({getattr(e, 'reason', e)}). Without network "
            f"access, fetch the file elsewhere and pass it: swinkit.{maker}({name!r}, "
            f"checkpoint='path/to/{path.name}') - or copy it to {path}") from None
    _verify(path, checksum, url)
    return path


def _verify(path: Path, checksum: str | None, url: str) -> None:
    if checksum is None:
        warnings.warn(f"{url} has no published checksum; downloaded {path} has sha256 {_digest(path, 'sha256')}",
                      stacklevel=3)
        return
    algo, expected = checksum.split(":")
    got = _digest(path, algo)
    if not got.startswith(expected):  # a prefix: the first digits, as torch.hub's file names give them
        path.unlink()
        raise CheckpointError(f"checksum mismatch for {url}: expected {algo} {expected}, got {got}; the download was "
                              "deleted. Try again, or download the file yourself and pass checkpoint=PATH.")
