"""Panoptic segmentation data in COCO's panoptic format (things and stuff), semantic maps as mask targets, and a
converter that builds that format from COCO128's polygons and semantic masks.

Layout of a dataset folder DIR (COCO's own: train2017/, annotations/panoptic_train2017.json, ...):
- `DIR/annotations/panoptic_{split}.json`: "images" [{id, file_name, height, width}], "annotations" [{image_id,
  file_name (the PNG), segments_info [{id, category_id, iscrowd, area, bbox}]}], "categories" [{id, name, isthing}]
- `DIR/annotations/panoptic_{split}/*.png`: RGB, segment id = R + 256 G + 256^2 B (COCO's rgb2id), 0 = void
- `DIR/{split}/`: the images
`split` is whatever the folder holds (train2017 / val2017, train / val, ...): see `find_splits`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from ..io.files import OutputError, write_json
from ..io.images import IMG_EXTENSIONS, load_image


class PanopticDataError(ValueError):
    """Panoptic annotations that contradict themselves or their files; the message names the file."""


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int64 segment ids, COCO's R + 256 G + 256^2 B."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8, the inverse of rgb2id."""
    return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256) % 256], axis=-1).astype(np.uint8)


def find_splits(root: str | Path) -> list[str]:
    """The splits of a panoptic folder: the `{split}` of each `annotations/panoptic_{split}.json`, sorted."""
    return sorted(p.stem.removeprefix("panoptic_") for p in (Path(root) / "annotations").glob("panoptic_*.json"))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PanopticDataError(f"{path}: not readable as JSON ({e}); expected a COCO panoptic annotation file") \
            from e
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise PanopticDataError(f"{path}: no {', '.join(missing)} list(s); expected COCO panoptic JSON with "
                                "'images', 'annotations' and 'categories'")
    return data


class PanopticDataset(Dataset):
    """One COCO panoptic split (layout in the module docstring). Item i is (image, target): a uint8 (3, H, W)
    tv_tensors.Image and {"masks": tv_tensors.Mask bool (N, H, W), "labels": int64 (N,) contiguous class indices
    (positions in `categories`), "iscrowd": bool (N,), "segment_ids": int64 (N,), "image_id", "file_name"}, with
    `transforms` (torchvision v2) applied to both. Crowd segments stay in, flagged.

    The JSON is checked when the dataset is made (categories, files); the PNG against it when an item is read."""

    def __init__(self, root: str | Path, split: str, transforms=None):
        self.root, self.split, self.transforms = Path(root), split, transforms
        self.json_path = self.root / "annotations" / f"panoptic_{split}.json"
        if not self.json_path.is_file():
            raise FileNotFoundError(f"{self.json_path} not found: expected a COCO panoptic folder with "
                                    f"annotations/panoptic_{{split}}.json; splits there: {find_splits(self.root)}")
        data = _read_json(self.json_path)
        self.categories: list[dict] = data["categories"]
        bad = [c for c in self.categories if not {"id", "name", "isthing"} <= set(c)]
        if bad:
            raise PanopticDataError(f"{self.json_path}: categories without id, name or isthing: {bad[:3]}; expected "
                                    "{id, name, isthing} each")
        self.category_ids = [c["id"] for c in self.categories]  # contiguous index -> COCO category id
        self.class_names = [c["name"] for c in self.categories]
        self.is_thing = [bool(c["isthing"]) for c in self.categories]
        if len(set(self.category_ids)) != len(self.category_ids):
            raise PanopticDataError(f"{self.json_path}: category ids repeat ({self.category_ids}); expected each "
                                    "once")
        self._index = {cid: i for i, cid in enumerate(self.category_ids)}
        images = {im["id"]: im for im in data["images"]}
        self.samples = []  # (image path, PNG path, image id, segments_info)
        for ann in data["annotations"]:
            png = self.root / "annotations" / f"panoptic_{split}" / ann["file_name"]
            if ann["image_id"] not in images:
                raise PanopticDataError(f"{self.json_path}: the annotation of {png.name} names image_id "
                                        f"{ann['image_id']}, which is not in 'images'")
            image = self.root / split / images[ann["image_id"]]["file_name"]
            for path in (image, png):
                if not path.is_file():
                    raise PanopticDataError(f"{path} not found (listed in {self.json_path}): expected images in "
                                            f"{self.root / split} and PNGs in {png.parent}")
            for s in ann["segments_info"]:
                if s["category_id"] not in self._index:
                    raise PanopticDataError(f"{self.json_path}: segment {s['id']} of {png.name} has category_id "
                                            f"{s['category_id']}, which is not in 'categories' (ids "
                                            f"{self.category_ids}); fix the annotation or add the category")
            ids = [s["id"] for s in ann["segments_info"]]
            if len(set(ids)) != len(ids) or 0 in ids:
                raise PanopticDataError(f"{self.json_path}: segment ids of {png.name} repeat or include 0 ({ids}); "
                                        "expected distinct ids > 0 (0 is void)")
            self.samples.append((image, png, ann["image_id"], ann["segments_info"]))

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[tv_tensors.Image, dict]:
        """The untransformed item, its PNG checked against the JSON."""
        image_path, png, image_id, segments = self.samples[index]
        img = load_image(image_path)
        with Image.open(png) as p:
            if p.mode != "RGB":
                raise PanopticDataError(f"{png}: a {p.mode} image; expected an RGB PNG (segment id = R + 256 G + "
                                        "256^2 B)")
            ids = rgb2id(np.asarray(p))  # (H, W)
        if ids.shape != (img.height, img.width):
            raise PanopticDataError(f"{png}: PNG is {ids.shape[1]}x{ids.shape[0]} but its image {image_path.name} "
                                    f"is {img.width}x{img.height}; expected the same size")
        seg_ids = np.array([s["id"] for s in segments], dtype=np.int64)
        present = np.unique(ids)
        unknown = sorted(set(present.tolist()) - set(seg_ids.tolist()) - {0})
        if unknown:
            raise PanopticDataError(f"{png}: segment id(s) {unknown} are in the PNG but not in its segments_info in "
                                    f"{self.json_path.name}; regenerate the PNG and the JSON together")
        empty = sorted(set(seg_ids.tolist()) - set(present.tolist()))
        if empty:
            raise PanopticDataError(f"{png}: segment id(s) {empty} of {self.json_path.name} have no pixel in the "
                                    "PNG; remove them from segments_info or regenerate the PNG")
        masks = torch.from_numpy(ids[None] == seg_ids[:, None, None])  # (N, H, W)
        target = {"masks": tv_tensors.Mask(masks),
                  "labels": torch.tensor([self._index[s["category_id"]] for s in segments], dtype=torch.int64),
                  "iscrowd": torch.tensor([bool(s.get("iscrowd", 0)) for s in segments], dtype=torch.bool),
                  "segment_ids": torch.from_numpy(seg_ids), "image_id": image_id, "file_name": image_path.name}
        return tv_tensors.Image(F.pil_to_tensor(img)), target

    def __getitem__(self, index: int):
        img, target = self.load(index)
        return self.transforms(img, target) if self.transforms else (img, target)


def panoptic_map(masks: torch.Tensor, labels: torch.Tensor, void: int = -1) -> torch.Tensor:
    """(N, H, W) bool masks and (N,) labels -> (H, W, 2) int64 (category, instance) pairs, torchmetrics' input:
    instance k + 1 for mask k, (void, 0) where no mask is (the void of swinkit.metrics.panoptic by default). Masks
    should not overlap; where they do, the later one wins."""
    index = torch.zeros(masks.shape[1:], dtype=torch.long, device=masks.device)  # (H, W), 0 = no mask
    for k, m in enumerate(masks):
        index[m] = k + 1
    cats = torch.cat([torch.tensor([void], device=labels.device), labels.long()])[index]  # (H, W)
    return torch.stack([cats, index], dim=-1)  # (H, W, 2)


def semantic_targets(label_map: torch.Tensor, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """A semantic label map (H, W) -> one bool mask per class present (N, H, W) and its class (N,) int64, classes
    ascending; `ignore_index` pixels are in no mask."""
    if label_map.dim() != 2:
        raise ValueError(f"expected a label map of shape (H, W), got {tuple(label_map.shape)}")
    classes = torch.unique(label_map)
    classes = classes[classes != ignore_index].long()
    return label_map[None] == classes[:, None, None], classes  # (N, H, W), (N,)


# ----------------------------------------------------------------------------------------------------------
# COCO128 (YOLO polygons + semantic masks) -> COCO panoptic


def _coco128_categories(src: Path) -> list[dict]:
    """Things from instance_segmentation/config.yaml (80, COCO thing ids 1..90), stuff from the ids of
    semantic_segmentation/config.yaml that are not things (COCO's 92..200); sorted by id as in COCO."""
    import yaml

    things = yaml.safe_load((src / "instance_segmentation" / "config.yaml").read_text())["names"]
    semantic = yaml.safe_load((src / "semantic_segmentation" / "config.yaml").read_text())["classes"]
    clash = {k: (things[k], v) for k, v in semantic.items() if k in things and things[k] != v}
    if clash:
        raise PanopticDataError(f"{src}: the two config.yaml files name these ids differently: {clash}; expected "
                                "the same COCO panoptic names")
    names = {**{k: v for k, v in semantic.items() if k != 0}, **things}
    return [{"id": k, "name": names[k], "isthing": int(k in things)} for k in sorted(names)]


def _read_polygons(path: Path, thing_ids: set[int]) -> tuple[list[tuple[int, list[float]]], int]:
    """([(category id, [x1, y1, x2, y2, ...] normalised)], polygons of fewer than 3 points dropped)."""
    polygons, degenerate = [], 0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        tok = line.split()
        if not tok:
            continue
        try:
            cat, xy = int(tok[0]), [float(t) for t in tok[1:]]
        except ValueError as e:
            raise PanopticDataError(f"{path}:{n}: {e}; expected `class x1 y1 x2 y2 ...`") from e
        if cat not in thing_ids or len(xy) % 2:
            raise PanopticDataError(f"{path}:{n}: class {cat} with {len(xy)} coordinates; expected a thing id of "
                                    "instance_segmentation/config.yaml and x, y pairs")
        if len(xy) < 6:
            degenerate += 1
        else:
            polygons.append((cat, xy))
    return polygons, degenerate


def _bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _convert_image(sem: np.ndarray, polygons: list, things: set[int], stuff: set[int], stats: dict):
    """(segment id map (H, W), segments_info) of one image by the rule of coco128_to_panoptic; counts into `stats`."""
    from pycocotools import mask as mask_utils

    h, w = sem.shape
    inst = []  # (category, mask of its polygon where the semantic mask says its category)
    for cat, xy in polygons:
        flat = (np.asarray(xy).reshape(-1, 2) * (w, h)).ravel().tolist()  # normalised -> pixels
        raster = mask_utils.decode(mask_utils.frPyObjects([flat], h, w))[..., 0].astype(bool)  # (H, W)
        inst.append((cat, raster & (sem == cat)))
    cover = np.sum([m for _, m in inst], axis=0, dtype=np.int32) if inst else np.zeros((h, w), np.int32)  # (H, W)
    is_thing = np.isin(sem, list(things))
    ids, segments = np.zeros((h, w), np.int64), []
    for cat, m in inst:
        own = m & (cover == 1)
        if not own.any():
            stats["dropped"]["no_pixel_of_its_class" if not m.any() else "only_overlap"] += 1
            continue
        segments.append((cat, own))
    stats["segments"]["things"] += len(segments)
    for cat in sorted(set(np.unique(sem).tolist()) & stuff):
        segments.append((cat, sem == cat))
        stats["segments"]["stuff"] += 1
    info = []
    for k, (cat, m) in enumerate(segments, 1):
        ids[m] = k
        info.append({"id": k, "category_id": cat, "iscrowd": 0, "area": int(m.sum()), "bbox": _bbox(m)})
    px = stats["pixels"]
    px["things"] += int((is_thing & (cover == 1)).sum())
    px["stuff"] += int(np.isin(sem, list(stuff)).sum())
    px["void_unlabeled"] += int((sem == 0).sum())
    px["void_no_instance"] += int((is_thing & (cover == 0)).sum())
    px["void_overlap"] += int((is_thing & (cover > 1)).sum())
    px["total"] += h * w
    return ids, info


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def coco128_to_panoptic(src: str | Path, dst: str | Path, overwrite: bool = False, verbose: bool = True) -> dict:
    """COCO128 (images/{split}, instance_segmentation/labels/{split}/*.txt YOLO polygons, semantic_segmentation/
    masks/{split}/*.png COCO panoptic category per pixel) -> a COCO panoptic folder at `dst` (module docstring),
    with all 133 COCO panoptic categories. Returns the report (printed unless not `verbose`).

    The rule: the semantic mask decides every pixel's category (it was rasterised from COCO's panoptic PNGs, which
    resolve the overlaps that the instance polygons keep); the polygons only split thing pixels into instances.
    - semantic 0 -> void ("unlabeled");
    - a stuff category -> that category's one segment in the image, whatever polygons cover it;
    - a thing category c -> the instance whose polygon of class c covers the pixel when exactly one does; void
      when none does ("no_instance": crowd regions, polygon edges) or several do ("overlap": instances of one
      class on top of each other, which the polygons cannot order).
    An instance left without pixels is dropped and counted ("no_pixel_of_its_class", "only_overlap"); so is a
    polygon of fewer than 3 points ("degenerate_polygon"). Images without a semantic mask are skipped (counted); a
    missing polygon file means no instances. Images are hard-linked into dst/{split}/ (copied across file systems).
    Everything is written to a temporary folder beside `dst`, then renamed to it; an existing `dst` is an
    OutputError unless `overwrite`."""
    src, dst = Path(src), Path(dst)
    need = ["images", "instance_segmentation/config.yaml", "semantic_segmentation/config.yaml",
            "semantic_segmentation/masks"]
    if not src.is_dir():
        raise PanopticDataError(f"{src} not found: expected a COCO128 folder (images/, instance_segmentation/, "
                                "semantic_segmentation/)")
    missing = [n for n in need if not (src / n).exists()]
    if missing:
        raise PanopticDataError(f"{src}: no {', '.join(missing)}; expected the COCO128 layout (images/{{split}}, "
                                "instance_segmentation/, semantic_segmentation/)")
    if dst.exists() and not overwrite:
        raise OutputError(f"{dst} exists: pass --overwrite to replace it, or choose another destination")
    if dst.resolve().is_relative_to(src.resolve()) or src.resolve().is_relative_to(dst.resolve()):
        raise OutputError(f"{dst} and {src} contain one another: choose a destination outside the source")
    categories = _coco128_categories(src)
    things = {c["id"] for c in categories if c["isthing"]}
    stuff = {c["id"] for c in categories if not c["isthing"]}
    splits = sorted(p.name for p in (src / "semantic_segmentation" / "masks").iterdir() if p.is_dir()
                    and (src / "images" / p.name).is_dir())
    report = {"src": str(src), "dst": str(dst), "categories": {"things": len(things), "stuff": len(stuff)},
              "splits": {}}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    try:
        for split in splits:
            report["splits"][split] = _convert_split(src, tmp, split, categories, things, stuff)
        old = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.old.")) if dst.exists() else None
        if old is not None:
            os.replace(dst, old / dst.name)
        os.replace(tmp, dst)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        print(report_text(report))
    return report


def _convert_split(src: Path, out: Path, split: str, categories: list[dict], things: set[int],
                   stuff: set[int]) -> dict:
    stats = {"images": 0, "images_skipped": 0, "segments": {"things": 0, "stuff": 0},
             "dropped": {"no_pixel_of_its_class": 0, "only_overlap": 0, "degenerate_polygon": 0},
             "pixels": {k: 0 for k in ("things", "stuff", "void_unlabeled", "void_no_instance", "void_overlap",
                                        "total")}}
    known = things | stuff | {0}
    (out / split).mkdir()
    (out / "annotations" / f"panoptic_{split}").mkdir(parents=True)
    images, annotations = [], []
    for image in sorted(p for p in (src / "images" / split).iterdir() if p.suffix.lower() in IMG_EXTENSIONS):
        mask_path = src / "semantic_segmentation" / "masks" / split / f"{image.stem}.png"
        if not mask_path.is_file():
            stats["images_skipped"] += 1
            continue
        with Image.open(mask_path) as m, Image.open(image) as im:
            sem, size = np.asarray(m), im.size
        if sem.ndim != 2 or (sem.shape[1], sem.shape[0]) != size:
            raise PanopticDataError(f"{mask_path}: shape {sem.shape}; expected one channel of the size of "
                                    f"{image.name} ({size[0]}x{size[1]})")
        unknown = sorted(set(np.unique(sem).tolist()) - known)
        if unknown:
            raise PanopticDataError(f"{mask_path}: category ids {unknown} are not in semantic_segmentation/"
                                    "config.yaml; expected COCO panoptic ids or 0")
        label_path = src / "instance_segmentation" / "labels" / split / f"{image.stem}.txt"
        polygons, degenerate = _read_polygons(label_path, things) if label_path.is_file() else ([], 0)
        stats["dropped"]["degenerate_polygon"] += degenerate
        ids, info = _convert_image(sem, polygons, things, stuff, stats)
        Image.fromarray(id2rgb(ids)).save(out / "annotations" / f"panoptic_{split}" / f"{image.stem}.png")
        _link_or_copy(image, out / split / image.name)
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": image.name, "height": size[1], "width": size[0]})
        annotations.append({"image_id": image_id, "file_name": f"{image.stem}.png", "segments_info": info})
        stats["images"] += 1
    write_json(out / "annotations" / f"panoptic_{split}.json",
               {"info": {"description": f"COCO128 {split} as COCO panoptic (swinkit data coco128-panoptic)"},
                "images": images, "annotations": annotations, "categories": categories}, indent=None)
    return stats


def report_text(report: dict) -> str:
    """The converter's report as lines for people."""
    c = report["categories"]
    lines = [f"{report['src']} -> {report['dst']} ({c['things'] + c['stuff']} categories: {c['things']} things, "
             f"{c['stuff']} stuff)"]
    for split, s in report["splits"].items():
        d, px = s["dropped"], s["pixels"]
        pct = {k: f"{100 * n / max(px['total'], 1):.1f}%" for k, n in px.items()}
        lines += [f"{split}: {s['images']} images ({s['images_skipped']} without a semantic mask skipped)",
                  f"  segments kept: {s['segments']['things']} things, {s['segments']['stuff']} stuff; dropped: "
                  f"{d['no_pixel_of_its_class']} instances with no pixel of their class, {d['only_overlap']} "
                  f"only under other instances of their class, {d['degenerate_polygon']} degenerate polygons",
                  f"  pixels: {px['total']:,} = things {px['things']:,} ({pct['things']}) + stuff "
                  f"{px['stuff']:,} ({pct['stuff']}) + void {px['void_unlabeled']:,} unlabeled "
                  f"({pct['void_unlabeled']}), {px['void_no_instance']:,} thing without instance "
                  f"({pct['void_no_instance']}), {px['void_overlap']:,} instance overlap "
                  f"({pct['void_overlap']})"]
    return "\n".join(lines)
