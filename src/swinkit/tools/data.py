"""`swinkit data`: dataset conversions. `coco128-panoptic SRC DST` builds a COCO panoptic folder (PNG + JSON, things
and stuff) from COCO128's polygons and semantic masks (swinkit.data.panoptic.coco128_to_panoptic)."""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("coco128-panoptic", help="COCO128 (images/, instance_segmentation/, semantic_segmentation/) "
                                                "-> COCO panoptic PNG + JSON")
    p.add_argument("src", help="the COCO128 folder")
    p.add_argument("dst", help="the folder to create (annotations/panoptic_{split}.json, annotations/"
                               "panoptic_{split}/*.png, {split}/*.jpg)")
    p.add_argument("--overwrite", action="store_true", help="replace DST when it exists")


def run(args: argparse.Namespace) -> int:
    from ..data.panoptic import coco128_to_panoptic

    try:
        coco128_to_panoptic(args.src, args.dst, overwrite=args.overwrite)
    except (ValueError, OSError) as e:  # PanopticDataError and OutputError are ValueErrors
        print(f"swinkit data: {e}", file=sys.stderr)
        return 2
    return 0
