"""`swinkit models`: every variant of every family (swinkit.families) with its parameters and FLOPs measured live
(swinkit.counting), beside the published figures; rows stream as they are measured and come from a cache after that.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from ..config import ALIASES
from ..families import TABLE_ORDER
from ..io.files import cache_dir, dumps, source_digest, write_json


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--aliases", action="store_true", help="also list the short aliases (swin_t, ...)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")


def _sections(aliases: bool) -> list[tuple[object, list[str]]]:
    """(family, variant names) in table order (image Swins: the short aliases only with --aliases)."""
    return [(f, [n for n in f.variants if aliases or n not in ALIASES]) for f in TABLE_ORDER]


def run(args: argparse.Namespace) -> int:
    """Print each row as soon as it is measured (about a minute in all on a small CPU the first time); rows come
    from the cache after that."""
    cache = cache_dir() / f"models-{source_digest(torch.__version__)}.json"  # any change measures anew
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    fresh = len(known)
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    if not args.json and not known:
        print("measuring every variant on the meta device (once; cached in "
              f"{cache.parent}) ...", file=sys.stderr, flush=True)
    for family, names in _sections(args.aliases):
        title, note, measure = None if family.name == "swin" else family.title, family.note, family.count
        if not args.json:
            print(f"{'model':36} {'V':>1} {'size':>4} {'win':>3} {'params(M)':>10} {'paper':>6} {'GMACs':>7} "
                  f"{'paper':>6}" if title is None else f"\n{title:36} {'V':>1} {'size':>11} {'win':>6} "
                  f"{'params(M)':>10} {'paper':>6} {'GMACs':>7} {'paper':>6}", flush=True)
        for name in names:
            key = f"{measure.__name__}:{name}"
            if key not in known:
                try:
                    known[key] = measure(name)
                except ImportError:  # torchvision (the train extra) for the detectors
                    break
            r = known[key]
            if args.json:
                print(dumps(r), flush=True)
            elif title is None:
                print(f"{r['name']:36} {r['version']:>1} {r['img_size']:>4} {r['window']:>3} {r['params_m']:>10.1f} "
                      f"{fmt(r['paper_params_m'], '.1f'):>6} {r['gmacs']:>7.1f} {fmt(r['paper_gmacs'], '.1f'):>6}",
                      flush=True)
            else:
                size = "x".join(map(str, r["size"]))
                print(f"{r['name']:36} {r['version']:>1} {size:>11} {r['window']:>6} {r['params_m']:>10.1f} "
                      f"{fmt(r['paper_params_m'], '.1f'):>6} {fmt(r['gmacs'], '.1f'):>7} "  # gmacs None: not measured
                      f"{fmt(r['paper_gmacs'], '.1f'):>6}",
                      flush=True)
        if not args.json:
            print(note)
    if len(known) > fresh:
        try:
            write_json(cache, known, indent=None)
        except OSError:  # a read-only home: measure again next time
            pass
    return 0
