"""Detection and instance-segmentation data for torchvision's detectors (Faster / Mask R-CNN, RetinaNet, FCOS).

Two layouts under a data root are found automatically:
- COCO: `annotations/instances_<split>*.json`, images in `<split name>/`, `images/<split name>/`, `images/` or the
  root itself (the first that holds the json's files).
- YOLO text: `images/<split>/` with one `<stem>.txt` per image in `labels/<split>/`, or in several label sets
  `*/labels/<split>/` (COCO128 in ../shared/data/coco128 has boxes in object_detection/ and polygons in
  instance_segmentation/); class names from a YAML (`names:`) or a classes.txt beside the labels.

Every label file is parsed when the dataset is made, so a bad line is an error naming its file and line before
training starts; boxes outside the image are clipped, degenerate boxes and polygons dropped, and all of it counted
in `issues`. Images decode lazily. A sample is (uint8 image, target) with the target torchvision detectors take:
XYXY pixel boxes, labels 1..C (0 is the background), (n, H, W) masks for instance segmentation.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..data import IMAGENET_MEAN, IMG_EXTENSIONS, load_image

ROUND_OFF = 1e-6  # clipping by less than this fraction of the image is not counted
ISSUES = ("boxes_clipped", "boxes_dropped", "polygons_dropped", "negatives", "crowd", "missing_labels",
          "orphan_labels", "box_masks")
_ISSUE_TEXT = {  # how summary() words each count
    "boxes_clipped": "clipped {} boxes to their image", "boxes_dropped": "dropped {} degenerate boxes",
    "polygons_dropped": "dropped {} degenerate polygons", "negatives": "{} images without objects",
    "crowd": "left {} crowd regions out of the targets", "orphan_labels": "ignored {} label files without an image",
    "box_masks": "{} objects without a polygon masked by their box"}


# ----------------------------------------------------------------------------------------------------------
# what is read from the files


@dataclass
class _Record:
    """One image and its cleaned objects. YOLO coordinates stay normalised to [0, 1] until the image's size is
    known; COCO's are pixels. A shape is a list of flat polygons [x1, y1, x2, y2, ...], a COCO RLE dict, or None
    (the box is the mask)."""

    path: Path
    image_id: int
    boxes: np.ndarray  # (n, 4) float64 XYXY
    labels: np.ndarray  # (n,) int64 contiguous class indices 0..C-1
    shapes: list = field(default_factory=list)  # n shapes, only with masks
    ann_ids: list[int] = field(default_factory=list)  # COCO annotation ids
    crowd: list[dict] = field(default_factory=list)  # COCO iscrowd=1 annotations, category mapped, for coco_gt
    areas: list = field(default_factory=list)  # COCO: each annotation's `area` (None where it has none)
    size: tuple[int, int] | None = None  # (H, W) when the annotation file gives it


class _Classes:
    """Maps the file's class ids to contiguous indices, with the words for an error when one is unknown."""

    def __init__(self, names: dict[int, str], given: list[str] | None, source: str):
        self.file_names = names
        if given is None:
            ids = sorted(names)
            self.classes, self.category_ids = [names[i] for i in ids], ids
            self.index = {i: k for k, i in enumerate(ids)}
            span = f"ids {ids[0]}..{ids[-1]}" if ids else "no ids"
            self.where = f"the {len(ids)} classes of {source} ({span})"
        else:
            self.classes = list(given)
            by_name = {n: i for i, n in sorted(names.items(), reverse=True)}  # the smallest id of a repeated name
            self.category_ids = [by_name.get(n, -1) for n in self.classes]  # -1: the class is not in this file
            self.index = {i: self.classes.index(n) for i, n in names.items() if n in self.classes}
            self.where = f"the training set's {len(given)} classes"

    def __call__(self, class_id: int, where: str, what: str = "class id") -> int:
        if class_id not in self.index:
            name = f" ({self.file_names[class_id]})" if class_id in self.file_names else ""
            raise ValueError(f"{where}: {what} {class_id}{name} is not in {self.where}: fix it or add the class to "
                             "the names")
        return self.index[class_id]


def _count() -> dict[str, int]:
    return dict.fromkeys(ISSUES, 0)


def _polygon_area(xy: np.ndarray) -> float:
    """Shoelace area of a (k, 2) polygon."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _outside(xy: np.ndarray, clipped: np.ndarray, extent: float) -> bool:
    """Whether clipping moved a point by more than round-off: YOLO files hold 6 decimals, so a box edge at
    1.0000005 is on the border, not outside it."""
    return bool(np.abs(xy - clipped).max(initial=0) > ROUND_OFF * extent)


def _clip_box(box: np.ndarray, w: float, h: float, issues: dict) -> np.ndarray | None:
    """XYXY box clipped to [0, w] x [0, h] (counted), or None when no area is left (counted)."""
    clipped = np.clip(box, 0, [w, h, w, h])
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        issues["boxes_dropped"] += 1
        return None
    issues["boxes_clipped"] += _outside(box, clipped, max(w, h))
    return clipped


def _clip_polygon(xy: np.ndarray, w: float, h: float, issues: dict) -> np.ndarray | None:
    """(k, 2) polygon with its points clamped to the image, or None (counted) when it has fewer than 3 points or
    no area left. Clamping the points approximates cutting the polygon at the border, close for the slight
    overshoots that annotation tools make."""
    clipped = np.clip(xy, 0, [w, h])
    if len(xy) < 3 or _polygon_area(clipped) == 0:
        issues["polygons_dropped"] += 1
        return None
    return clipped


# ----------------------------------------------------------------------------------------------------------
# finding the split


def _matches(folder: Path, split: str, pattern: str = "*", prefix: str = "") -> list[Path]:
    """Entries of `folder` named `prefix + split` (exactly, less their suffix) or else starting with it."""
    if not folder.is_dir():
        return []
    found = sorted(p for p in folder.glob(pattern) if p.name.startswith(prefix + split) and not p.name.startswith("."))
    exact = [p for p in found if (p.stem if p.is_file() else p.name) == prefix + split]
    return exact or found


def _one(found: list[Path], split: str, what: str) -> Path:
    if len(found) > 1:
        raise ValueError(f"split {split!r} matches {len(found)} {what}: {[p.name for p in found]}; give the split's "
                         "full name (e.g. 'train2017')")
    return found[0]


def _coco_json(root: Path, split: str) -> list[Path]:
    return _matches(root / "annotations", split, "instances_*.json", "instances_")


def _yolo_images(root: Path, split: str) -> list[Path]:
    return [p for p in _matches(root / "images", split) if p.is_dir()]


def has_split(root: str | Path, split: str) -> bool:
    """Whether `root` holds `split` as a COCO json or a YOLO image folder."""
    root = Path(root)
    return bool(_coco_json(root, split) or _yolo_images(root, split))


def open_detection_data(root: str | Path, split: str, masks: bool = False,
                        classes: list[str] | None = None) -> "DetectionDataset":
    """The `split` ("train", "val" or a full name such as "val2017") of the COCO or YOLO data in `root`. With
    `masks`, targets carry instance masks (YOLO: the polygon label set when there are several). `classes` are the
    training set's names, given when opening val so both number the classes alike."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"detection data root {root} does not exist: expected a folder with annotations/"
                                "instances_<split>.json (COCO) or images/<split>/ and labels/<split>/ (YOLO)")
    if _coco_json(root, split):
        return _open_coco(root, _one(_coco_json(root, split), split, "COCO json files"), masks, classes)
    if _yolo_images(root, split):
        return _open_yolo(root, _one(_yolo_images(root, split), split, "image folders"), masks, classes)
    raise FileNotFoundError(f"{root} has no {split!r} split: expected {root}/annotations/instances_{split}*.json "
                            f"(COCO) or {root}/images/{split}*/ with labels in {root}/labels/ or {root}/*/labels/ "
                            "(YOLO)")


# ----------------------------------------------------------------------------------------------------------
# COCO json


def _coco_images_folder(root: Path, json_path: Path, images: list[dict]) -> Path:
    name = json_path.stem[len("instances_"):]
    candidates = [root / name, root / "images" / name, root / "images", root]
    if not images:
        return next((c for c in candidates if c.is_dir()), root)
    first = images[0]["file_name"]
    for c in candidates:
        if (c / first).is_file():
            return c
    raise FileNotFoundError(f"{json_path}: cannot find its image {first!r} in any of "
                            f"{[str(c) for c in candidates]}: put the images in {candidates[0]}")


def _coco_polygons(seg: list, where: str, w: int, h: int, issues: dict) -> list[list[float]]:
    """The valid parts of a COCO polygon segmentation, clamped to the image."""
    kept = []
    for poly in seg:
        if not isinstance(poly, list) or len(poly) % 2 or not all(isinstance(v, (int, float)) for v in poly):
            raise ValueError(f"{where}: a polygon must be a flat list of x, y numbers, got "
                             f"{str(poly)[:60]}: fix or remove the annotation")
        xy = _clip_polygon(np.asarray(poly, dtype=np.float64).reshape(-1, 2), w, h, issues)
        if xy is not None:
            kept.append(xy.ravel().tolist())
    return kept


def _open_coco(root: Path, json_path: Path, masks: bool, given: list[str] | None) -> "DetectionDataset":
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
            coco = COCO(str(json_path))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError) as e:
        raise ValueError(f"{json_path}: not a COCO instances json ({type(e).__name__}: {e}): expected images, "
                         "annotations and categories") from e
    for i, info in enumerate(coco.dataset.get("images", [])):
        if not isinstance(info, dict) or not isinstance(info.get("file_name"), str) or "id" not in info:
            raise ValueError(f"{json_path}: image entry {i} ({str(info)[:80]}) has no "
                             f"{'file_name' if isinstance(info, dict) and 'id' in info else 'id and file_name'}: "
                             "every entry of \"images\" needs an id and the file_name of its image")
    names = {int(c["id"]): str(c["name"]) for c in coco.dataset.get("categories", [])}
    cmap = _Classes(names, given, str(json_path))
    folder = _coco_images_folder(root, json_path, coco.dataset.get("images", []))
    issues, records, missing = _count(), [], []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        path = folder / info["file_name"]
        if not path.is_file():
            missing.append(path)
            continue
        if "width" in info and "height" in info:
            w, h = int(info["width"]), int(info["height"])
        else:
            with Image.open(path) as img:
                w, h = img.size
        boxes, labels, shapes, ids, crowd, areas = [], [], [], [], [], []
        for ann in coco.imgToAnns.get(image_id, []):
            where = f"{json_path}, annotation {ann.get('id')}"
            b = ann.get("bbox")
            if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and
                                                                not isinstance(v, bool) and math.isfinite(v)
                                                                for v in b)):
                raise ValueError(f"{where}: bbox {b!r} is not 4 numbers [x, y, width, height]: fix or remove the "
                                 "annotation")
            label = cmap(ann.get("category_id"), where, "category_id")
            if ann.get("iscrowd", 0):
                crowd.append({**ann, "category_id": label + 1})
                issues["crowd"] += 1
                continue
            box = _clip_box(np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]], dtype=np.float64), w, h, issues)
            if box is None:
                continue
            shape = None
            if masks:
                seg = ann.get("segmentation")
                if isinstance(seg, list) and seg:
                    shape = _coco_polygons(seg, where, w, h, issues)
                    if not shape:  # every part was degenerate: the object goes too
                        continue
                elif isinstance(seg, dict) and "counts" in seg:
                    shape = seg
                else:
                    issues["box_masks"] += 1
            boxes.append(box)
            labels.append(label)
            shapes.append(shape)
            ids.append(ann.get("id"))
            areas.append(ann.get("area"))
        issues["negatives"] += not boxes
        records.append(_Record(path, int(image_id), np.array(boxes, dtype=np.float64).reshape(-1, 4),
                               np.array(labels, dtype=np.int64), shapes if masks else [], ids, crowd, areas=areas,
                               size=(h, w)))
    if missing:
        raise FileNotFoundError(f"{json_path} lists {len(missing)} image(s) not in {folder}, e.g. {missing[0]}: "
                                "expected every file_name to exist there")
    return DetectionDataset(records, cmap.classes, cmap.category_ids, masks, "coco", root, issues,
                            f"{json_path.relative_to(root)}")


# ----------------------------------------------------------------------------------------------------------
# YOLO text


def _first_line(folder: Path) -> list[str] | None:
    """Tokens of the first non-empty line in the label files of `folder` (sorted), or None."""
    for path in sorted(folder.rglob("*.txt")):
        for line in path.read_text().splitlines():
            if line.split():
                return line.split()
    return None


def _label_set(root: Path, split_name: str, masks: bool) -> Path:
    """The folder holding labels/<split_name>/: root itself or one of root/*/ (several: masks picks polygons)."""
    sets = [d for d in [root, *sorted(p.parent for p in root.glob("*/labels"))] if (d / "labels" / split_name).is_dir()]
    if not sets:
        raise FileNotFoundError(f"{root}/images/{split_name} has no labels: expected {root}/labels/{split_name}/ or "
                                f"{root}/<set>/labels/{split_name}/ with one <image stem>.txt per image")
    if len(sets) == 1:
        return sets[0]
    polygons = {d: (t := _first_line(d / "labels" / split_name)) is not None and len(t) > 5 for d in sets}
    return ([d for d in sets if polygons[d] == masks] or sets)[0]


def _yolo_names(folder: Path) -> tuple[dict[int, str] | None, Path | None, dict]:
    """(id -> name or None, the file it came from, the YAML's settings) from a YAML with `names:` (a dict or a
    list, as ultralytics' data.yaml) or a classes.txt in `folder` or `folder/labels`."""
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        cfg = yaml.safe_load(path.read_text())
        if isinstance(cfg, dict) and "names" in cfg:
            names = cfg["names"]
            if isinstance(names, list):
                return {i: str(n) for i, n in enumerate(names)}, path, cfg
            if isinstance(names, dict):
                return {int(k): str(v) for k, v in names.items()}, path, cfg
            raise ValueError(f"{path}: `names` is a {type(names).__name__}: expected a list of names or a dict "
                             "of id: name")
    for path in (folder / "classes.txt", folder / "labels" / "classes.txt"):
        if path.is_file():
            lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            return dict(enumerate(lines)), path, {}
    return None, None, {}


def _class_ids(label_dir: Path) -> list[int]:
    """The class ids on the lines of every label file in `label_dir` (bad lines left to the parser)."""
    ids = set()
    for path in label_dir.rglob("*.txt"):
        for line in path.read_text().splitlines():
            tok = line.split()
            with contextlib.suppress(ValueError):
                if tok and float(tok[0]).is_integer():
                    ids.add(int(float(tok[0])))
    return sorted(ids)


def _parse_yolo_line(tok: list[str], where: str, cmap: _Classes, masks: bool, issues: dict):
    """(label, normalised XYXY box, normalised (k, 2) polygon or None) of one label line, or None when dropped."""
    if len(tok) < 3 or len(tok) % 2 == 0:
        raise ValueError(f"{where}: expected `class cx cy w h` or `class x1 y1 x2 y2 x3 y3 ...` (normalised), "
                         f"found {len(tok)} values{' (an odd number of coordinates)' if len(tok) > 1 else ''}: "
                         "fix or remove the line")
    try:
        values = [float(t) for t in tok]
    except ValueError as e:
        raise ValueError(f"{where}: {e}: expected numbers only; fix or remove the line") from None
    if not all(math.isfinite(v) for v in values) or not values[0].is_integer():
        raise ValueError(f"{where}: expected an integer class id and finite coordinates, got {' '.join(tok)[:80]!r}: "
                         "fix or remove the line")
    label = cmap(int(values[0]), where)
    coords = np.array(values[1:], dtype=np.float64)
    if len(coords) == 4:
        cx, cy, w, h = coords
        box = _clip_box(np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), 1.0, 1.0, issues)
        return None if box is None else (label, box, None)
    xy = coords.reshape(-1, 2)
    clipped = _clip_polygon(xy, 1.0, 1.0, issues)
    if clipped is None:
        return None
    issues["boxes_clipped"] += _outside(xy, clipped, 1.0)
    return label, np.concatenate([clipped.min(0), clipped.max(0)]), clipped if masks else None


def _open_yolo(root: Path, images_dir: Path, masks: bool, given: list[str] | None) -> "DetectionDataset":
    split_name = images_dir.name
    label_root = _label_set(root, split_name, masks)
    labels_dir = label_root / "labels" / split_name
    names, names_file, cfg = _yolo_names(label_root)
    if names is None:  # named by number, from the training labels (this split's when there are none)
        train = [p for p in _yolo_images(root, "train") if (label_root / "labels" / p.name).is_dir()]
        ids = _class_ids(label_root / "labels" / (train[0].name if train else split_name))
        names, names_file = {i: str(i) for i in ids}, f"the training labels in {label_root / 'labels'}"
    cmap = _Classes(names, given, str(names_file))
    skip_missing = bool(cfg.get("skip_if_label_file_missing", False))
    issues, records, used = _count(), [], set()
    images = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if not images:
        raise ValueError(f"{images_dir} holds no images (extensions {', '.join(IMG_EXTENSIONS)})")
    for path in images:
        label_file = labels_dir / path.relative_to(images_dir).with_suffix(".txt")
        lines = []
        if label_file.is_file():
            lines = label_file.read_text().splitlines()
            used.add(label_file)
        else:
            issues["missing_labels"] += 1
            if skip_missing:
                continue
        objects = []
        for n, line in enumerate(lines, 1):
            tok = line.split()
            if tok and (obj := _parse_yolo_line(tok, f"{label_file}, line {n}", cmap, masks, issues)) is not None:
                objects.append(obj)
        issues["box_masks"] += sum(masks and shape is None for _, _, shape in objects)
        issues["negatives"] += not objects
        records.append(_Record(path, len(records) + 1, np.array([b for _, b, _ in objects]).reshape(-1, 4),
                               np.array([lab for lab, _, _ in objects], dtype=np.int64),
                               [s for _, _, s in objects] if masks else []))
    issues["orphan_labels"] = sum(p not in used for p in labels_dir.rglob("*.txt"))
    if not records:
        raise ValueError(f"{images_dir}: no image has a label file in {labels_dir} and {names_file} says "
                         "skip_if_label_file_missing: add the labels")
    source = str(label_root.relative_to(root) / "labels") if label_root != root else "labels"
    return DetectionDataset(records, cmap.classes, cmap.category_ids, masks, "yolo", root, issues, source,
                            skip_missing_labels=skip_missing)


# ----------------------------------------------------------------------------------------------------------
# the dataset


def _rle(shape, h: int, w: int) -> dict:
    """One RLE of a shape (flat polygons, a COCO RLE, compressed or not) on an (h, w) canvas."""
    if isinstance(shape, list):
        return mask_utils.merge(mask_utils.frPyObjects(shape, h, w))
    if isinstance(shape["counts"], list):
        return mask_utils.frPyObjects(shape, h, w)
    return shape


def _json_rle(shape, h: int, w: int) -> dict:
    rle = dict(_rle(shape, h, w))
    if isinstance(rle["counts"], bytes):
        rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _box_polygon(b) -> list[list[float]]:
    return [[b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]]]


class DetectionDataset(Dataset):
    """Images with their boxes (and instance masks): (tv_tensors.Image (3, H, W) uint8, target) as torchvision
    detectors take them, then `transform(image, target)` when set. Made by `open_detection_data`.

    classes: contiguous class names; class k is the detectors' label k + 1 (0 is the background).
    category_ids: the file's own id of each class (COCO category_id or YOLO class id; -1 where `classes` came from
    the training set and this file lacks the class). issues: what was cleaned, by kind (see ISSUES)."""

    def __init__(self, records: list[_Record], classes: list[str], category_ids: list[int], with_masks: bool,
                 format: str, root: Path, issues: dict[str, int], source: str, transform=None,
                 skip_missing_labels: bool = False):
        self.records, self.classes, self.category_ids = records, classes, category_ids
        self.with_masks, self.format, self.root, self.issues = with_masks, format, Path(root), issues
        self.source, self.transform, self.skip_missing_labels = source, transform, skip_missing_labels

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, i: int) -> Path:
        return self.records[i].path

    def _pixels(self, r: _Record, h: int, w: int) -> tuple[np.ndarray, list]:
        """(n, 4) pixel XYXY boxes and, with masks, the n shapes as pixel polygons or RLEs (a box as its polygon)."""
        if self.format == "coco":
            return r.boxes, [s if s is not None else _box_polygon(b) for s, b in zip(r.shapes, r.boxes)]
        scale = np.array([w, h, w, h], dtype=np.float64)
        boxes = r.boxes * scale
        shapes = [[(s * scale[:2]).ravel().tolist()] if s is not None else _box_polygon(b)
                  for s, b in zip(r.shapes, boxes)] if self.with_masks else []
        return boxes, shapes

    def __getitem__(self, i: int):
        r = self.records[i]
        try:
            pil = load_image(r.path)
        except Exception as e:  # noqa: BLE001 - any decoder failure is reported with the file's name
            raise ValueError(f"{r.path}: cannot read the image ({type(e).__name__}: {e}): replace or remove "
                             "it") from e
        w, h = pil.size
        if r.size is not None and r.size != (h, w):
            raise ValueError(f"{r.path} is {w}x{h} but its annotations say {r.size[1]}x{r.size[0]}: fix the "
                             "json's width / height or use the annotated image")
        image = tv_tensors.Image(v2.functional.pil_to_tensor(pil))  # (3, H, W) uint8
        boxes, shapes = self._pixels(r, h, w)
        target = {"boxes": tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32), format="XYXY",
                                                    canvas_size=(h, w)),
                  "labels": torch.as_tensor(r.labels + 1, dtype=torch.int64)}
        if self.with_masks:
            masks = torch.zeros(0, h, w, dtype=torch.uint8)
            if shapes:
                with warnings.catch_warnings():  # pycocotools' decode trips numpy 2's __array__(copy=) deprecation
                    warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
                    masks = torch.from_numpy(mask_utils.decode([_rle(s, h, w) for s in shapes])).permute(2, 0, 1)
            target["masks"] = tv_tensors.Mask(masks.contiguous())  # (n, H, W)
        target["image_id"] = r.image_id
        return self.transform(image, target) if self.transform else (image, target)

    def _sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every image: from the annotations, else from the file headers (no decoding)."""
        def size(r: _Record) -> tuple[int, int]:
            if r.size is None:
                with Image.open(r.path) as img:
                    r.size = img.size[::-1]
            return r.size

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            return list(pool.map(size, self.records))

    def coco_gt(self) -> dict:
        """The ground truth as a COCO dict for pycocotools.COCO: category ids are the labels (class index + 1),
        image ids the targets' image_id, boxes the targets' (cleaned), plus the file's crowd regions (iscrowd=1)
        so that COCOeval ignores detections on them."""
        images, anns, next_id = [], [], 1
        for r, (h, w) in zip(self.records, self._sizes()):
            images.append({"id": r.image_id, "width": w, "height": h,
                           "file_name": str(r.path.relative_to(self.root)) if self.format == "yolo"
                           else r.path.name})
            boxes, shapes = self._pixels(r, h, w)
            for k, (b, label) in enumerate(zip(boxes, r.labels)):
                ann_id = r.ann_ids[k] if r.ann_ids else next_id
                next_id += 1
                ann = {"id": int(ann_id), "image_id": r.image_id, "category_id": int(label) + 1,
                       "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "iscrowd": 0}
                if self.with_masks:
                    ann["segmentation"] = _json_rle(shapes[k], h, w) if isinstance(shapes[k], dict) else shapes[k]
                ann["area"] = float(self._area(r, k, ann, h, w))
                anns.append(ann)
            for c in r.crowd:
                ann = {k: c[k] for k in ("id", "image_id", "category_id", "bbox") if k in c}
                ann.update(iscrowd=1, area=float(c.get("area") or c["bbox"][2] * c["bbox"][3]))
                if self.with_masks and c.get("segmentation"):
                    seg = c["segmentation"]
                    ann["segmentation"] = _json_rle(seg, h, w) if isinstance(seg, dict) else seg
                anns.append(ann)
        categories = [{"id": k + 1, "name": n} for k, n in enumerate(self.classes)]
        return {"info": {"description": f"{self.root} ({self.source})"}, "images": images, "annotations": anns,
                "categories": categories}

    def _area(self, r: _Record, k: int, ann: dict, h: int, w: int) -> float:
        """The file's area for COCO (what the official evaluation buckets by), else the mask's or the box's."""
        if r.areas and isinstance(r.areas[k], (int, float)):
            return r.areas[k]
        if "segmentation" in ann:
            return float(mask_utils.area(_rle(ann["segmentation"], h, w)))
        return ann["bbox"][2] * ann["bbox"][3]

    def summary(self) -> str:
        """One line: counts, the source, and what was cleaned."""
        n = sum(len(r.labels) for r in self.records)
        issues = [text.format(self.issues[k]) for k, text in _ISSUE_TEXT.items() if self.issues.get(k)]
        if self.issues.get("missing_labels"):
            kept = "skipped" if self.skip_missing_labels else "kept as negatives"
            issues.append(f"{self.issues['missing_labels']} images without a label file {kept}")
        return (f"{len(self)} images, {n} objects, {len(self.classes)} classes ({self.root.name} {self.format}, "
                f"{self.source}); " + (", ".join(issues) or "nothing to clean"))


# ----------------------------------------------------------------------------------------------------------
# transforms and batching


def _image_to_float() -> v2.ToDtype:
    return v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)


def train_transform(sizes: Sequence[int], max_size: int, hflip: float = 0.5, lsj: bool = False,
                    lsj_range: tuple[float, float] = (0.1, 2.0)) -> v2.Compose:
    """(Image, target) -> multi-scale resize (shorter side drawn from `sizes`, longer at most `max_size`), or with
    `lsj` large-scale jitter (Ghiasi et al. 2021: scale to a `lsj_range` multiple of an (S, S) frame, S =
    max(sizes), then a random (S, S) crop padded with the mean colour), horizontal flip, dropping boxes that became
    degenerate (with their labels and masks), image to float in [0, 1]. No normalisation: the detector does it."""
    if lsj:
        s = max(sizes)
        fill = {tv_tensors.Image: tuple(round(255 * m) for m in IMAGENET_MEAN), tv_tensors.Mask: 0}
        steps = [v2.ScaleJitter((s, s), scale_range=tuple(lsj_range)),
                 v2.RandomCrop((s, s), pad_if_needed=True, fill=fill)]
    else:
        steps = [v2.RandomShortestSize(list(sizes), max_size)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    return v2.Compose(steps + [v2.SanitizeBoundingBoxes(), _image_to_float()])


def eval_transform() -> v2.Compose:
    """(Image, target) -> float image in [0, 1] at its own size; the target unchanged."""
    return v2.Compose([_image_to_float()])


def collate(batch: list[tuple]) -> tuple[list, list]:
    """(images, targets) as lists, as torchvision detectors take them."""
    images, targets = zip(*batch)
    return list(images), list(targets)
