"""`swinkit search`: successive halving over per-stage window sizes (and mixers, or any SwinConfig field) under a
FLOPs budget, reported as the Pareto front of accuracy against MACs and against latency.

    swinkit search --data DIR --space window_size=4,7,8 --per-stage --flops-budget 0.02 --budget-minutes 30

The candidates are every assignment of the --space values (one per stage with --per-stage, else one for the whole
model; at most --max-candidates, sampled with --seed); those whose MACs at the training size exceed --flops-budget
are left out. Successive halving (Jamieson & Talwalkar 2016): every survivor is trained from scratch for the same
number of minutes, the best 1/eta are kept and trained again for eta times as long, until one is left; the rounds'
minutes are chosen so that all of them together take --budget-minutes. Runs, their resumption and their planning are
`swinkit ablate`'s (tools/ablate.py). Writes OUT/search.csv (every evaluation), OUT/pareto.csv and OUT/search.png.
"""
from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time
from pathlib import Path

import torch

from .ablate import (AblateError, Config, Probes, Setup, add_common_arguments, build_classifier, config_id, count,
                     format_value, guarded, mean_std, parse_vary, prepare, setup, torch_threads, train_seed, write_csv)

COLUMNS = ["config", "window_size", "mixer", "gmacs", "params_m", "latency_ms", "rung", "seed", "budget_min",
           "epochs", "top1", "status"]
PARETO_COLUMNS = ["config", "top1", "gmacs", "latency_ms", "front"]


def candidates(space: list[tuple[str, list]], stages: int, per_stage: bool, most: int, seed: int) -> list[dict]:
    """Every assignment of the space's values (per stage: one value per stage, joined into a tuple), in order; a
    seeded sample of `most` of them, in the same order, when there are more."""
    choices = [[(k, v) for v in (itertools.product(values, repeat=stages) if per_stage else values)]
               for k, values in space]
    every = [dict(combo) for combo in itertools.product(*choices)]
    if len(every) <= most:
        return every
    return [every[i] for i in sorted(random.Random(seed).sample(range(len(every)), most))]


def halving(n: int, eta: int) -> list[int]:
    """How many candidates each round trains: n, n // eta, ... while more than one is left ([1] for n = 1)."""
    rounds = [n]
    while rounds[-1] > 1:
        rounds.append(max(1, rounds[-1] // eta))
    return rounds[:-1] if len(rounds) > 1 else rounds


def round_minutes(total: float, rounds: list[int], eta: int) -> list[float]:
    """Minutes per run in each round: eta times the round before's, all runs together `total`."""
    first = total / sum(n * eta**r for r, n in enumerate(rounds))
    return [first * eta**r for r in range(len(rounds))]


def pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """The ids of the (accuracy, cost) points that no other point dominates (at least as accurate and at most as
    costly, and better in one of the two)."""
    return {k for k, (acc, cost) in points.items()
            if not any(a >= acc and c <= cost and (a > acc or c < cost) for j, (a, c) in points.items() if j != k)}


@torch.no_grad()
def latency_ms(model: torch.nn.Module, size: int, threads: int | None = None, min_seconds: float = 0.2,
               min_runs: int = 5) -> float:
    """Median milliseconds of one eager forward pass of one image (eval mode, no grad, on the model's device) with
    `threads` torch threads (the runs' --set threads; None: torch's), after two warm-up passes."""
    device = next(model.parameters()).device
    x = torch.rand(1, 3, size, size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch_threads(threads):
        model.eval()
        for _ in range(2):
            model(x)
        times: list[float] = []
        while len(times) < min_runs or sum(times) < min_seconds:
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_common_arguments(parser, "search")
    a = parser.add_argument
    a("--space", action="append", required=True, metavar="KEY=V1,V2,...",
      help="a SwinConfig field and the values to search (window_size=4,7,8; mixer=shifted_window,global); repeatable")
    a("--per-stage", action="store_true", help="each stage takes its own value (default: one for the whole model)")
    a("--flops-budget", type=float, required=True, metavar="GMACS",
      help="leave out candidates above this many GMACs per image at the training size")
    a("--budget-minutes", type=float, required=True, help="training minutes of the whole search")
    a("--eta", type=int, default=2, help="keep the best 1/eta each round and train them eta times longer (default 2)")
    a("--max-candidates", type=int, default=32, help="sample this many when the space has more (default 32)")
    a("--seed", type=int, default=0, help="seed of every run and of the sampling")
    a("--retrain-seeds", type=int, default=0, help="then train the winner N more times (seeds seed+1..seed+N) for "
                                                    "the last round's minutes: mean +- std")


def run(args: argparse.Namespace) -> int:
    return guarded(search, args)


def search(args: argparse.Namespace) -> int:
    """Count the candidates, leave out those over the FLOPs budget, halve, retrain the winner, write the files."""
    if args.eta < 2 or args.max_candidates < 1 or args.retrain_seeds < 0 or args.flops_budget <= 0:
        raise AblateError("--eta must be >= 2, --max-candidates >= 1, --retrain-seeds >= 0 and --flops-budget > 0")
    s = setup(args)
    space = parse_vary(args.space, "--space")
    stages = len(build_classifier(Config("base", "", s.set_model), s.recipe, s.num_classes).cfg.depths)
    cands = [Config(config_id(c), "", {**s.set_model, **c}, size=c.get("img_size", s.size))
             for c in candidates(space, stages, args.per_stage, args.max_candidates, args.seed)]
    rows, shape = [], {}
    for c in cands:
        c.params, c.macs = count(c, s)
        built = build_classifier(c, s.recipe, s.num_classes).cfg
        shape[c.id] = {"window_size": format_value([w[0] if w[0] == w[1] else f"{w[0]}x{w[1]}"
                                                    for w in built.window_size]),
                       "mixer": format_value(list(built.mixer))}
        if c.macs / 1e9 > args.flops_budget:
            rows.append(_row(c, shape, None, status=f"excluded: {c.macs / 1e9:.4g} GMACs > --flops-budget "
                                                    f"{args.flops_budget:g}"))
    alive = [c for c in cands if c.macs / 1e9 <= args.flops_budget]
    if not alive:
        raise AblateError(f"no candidate within --flops-budget {args.flops_budget:g} GMACs: the smallest needs "
                          f"{min(c.macs for c in cands) / 1e9:.4g}")
    device = s.set_train.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = int(s.set_train.get("threads", 0)) or None
    latency = {c.id: latency_ms(build_classifier(c, s.recipe, s.num_classes, device=device), c.size, threads)
               for c in alive}
    winner, minutes = halve(alive, s, args, rows, shape, latency)
    retrained = []
    argv, probed = prepare(winner, s, minutes, Probes(args.out / "probes.json"))
    for seed in range(args.seed + 1, args.seed + args.retrain_seeds + 1):
        res = train_seed(winner, argv, seed, args.out / "runs" / f"retrain-{winner.id}-seed{seed}", probed, 0, 0,
                         s.data, f"retrain {winner.id}")
        rows.append(_row(winner, shape, res, "retrain", seed, minutes, latency[winner.id], "retrain"))
        retrained += [res["summary"]["val_top1"]] if res["summary"] else []
    front = write_search(rows, args.out)
    print(f"winner: {winner.id} ({winner.macs / 1e9:.4g} GMACs, {latency[winner.id]:.2f} ms); Pareto front: "
          f"{', '.join(sorted(front))} -> {args.out / 'search.csv'}")
    if retrained:
        mean, std = mean_std(retrained)
        print(f"retrained {len(retrained)} time(s): top-1 {mean:.2f} ± {std if std is not None else 0:.2f}%")
    return 1 if any(str(r["status"]).startswith("failed") for r in rows) else 0


def halve(alive: list[Config], s: Setup, args: argparse.Namespace, rows: list[dict], shape: dict,
          latency: dict) -> tuple[Config, float]:
    """Successive halving of `alive`, a row per run appended to `rows`: (the winner, the last round's minutes)."""
    rounds = halving(len(alive), args.eta)
    minutes = round_minutes(args.budget_minutes, rounds, args.eta)
    print(f"search: {len(alive)} candidate(s) within {args.flops_budget:g} GMACs; rounds of "
          f"{', '.join(map(str, rounds))} run(s), {', '.join(f'{m:.3g}' for m in minutes)} min each -> {args.out}")
    probes = Probes(args.out / "probes.json")
    for r, per_run in enumerate(minutes):
        scores = {}
        for c in alive:
            argv, probed = prepare(c, s, per_run, probes)
            res = train_seed(c, argv, args.seed, args.out / "runs" / f"r{r}-{c.id}-seed{args.seed}", probed, 0, 0,
                             s.data, f"rung {r} {c.id}")
            scores[c.id] = res["summary"].get("val_top1", -1.0) if res["summary"] else -1.0
            rows.append(_row(c, shape, res, r, args.seed, per_run, latency[c.id]))
        keep = rounds[r + 1] if r + 1 < len(rounds) else 1
        ranked = sorted(alive, key=lambda c: (-scores[c.id], c.macs, c.id))  # ties: the cheaper
        for row in rows[-len(alive):]:
            row["status"] = row["status"] or ("kept" if row["config"] in {c.id for c in ranked[:keep]} else "dropped")
        alive = ranked[:keep]
    next(row for row in reversed(rows) if row["config"] == alive[0].id)["status"] = "winner"
    return alive[0], minutes[-1]


def _row(c: Config, shape: dict, res: dict | None, rung="", seed="", minutes=None, latency=None, status="") -> dict:
    """One evaluation (or exclusion) of a candidate: a row of search.csv."""
    summary = (res or {}).get("summary") or {}
    if res and res["error"]:
        status = f"failed: {res['error']}"
    return {"config": c.id, **shape[c.id], "gmacs": c.macs / 1e9, "params_m": c.params / 1e6, "latency_ms": latency,
            "rung": rung, "seed": seed, "budget_min": minutes, "epochs": summary.get("epochs"),
            "top1": summary.get("val_top1"), "status": status}


def write_search(rows: list[dict], out: Path) -> set[str]:
    """search.csv, pareto.csv (the front of rung 0, where every candidate had the same budget) and search.png.
    Returns the ids on either front."""
    first = {r["config"]: r for r in rows if r["rung"] == 0 and r["top1"] is not None}
    fronts = {cost: pareto_front({k: (r["top1"], r[cost]) for k, r in first.items()})
              for cost in ("gmacs", "latency_ms")}
    pareto = [{**first[k], "front": "+".join(n for n, f in (("gmacs", fronts["gmacs"]), ("latency",
                                                                                          fronts["latency_ms"]))
                                             if k in f)}
              for k in sorted(fronts["gmacs"] | fronts["latency_ms"], key=lambda k: (first[k]["gmacs"], k))]
    write_csv(rows, out / "search.csv", COLUMNS)
    write_csv(pareto, out / "pareto.csv", PARETO_COLUMNS)
    plot_search(first, fronts, out / "search.png")
    return fronts["gmacs"] | fronts["latency_ms"]


def plot_search(first: dict[str, dict], fronts: dict[str, set[str]], path: Path) -> None:
    """search.png: rung-0 top-1 against GMACs and against latency, the Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.files import atomic_write

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, cost, label in zip(axes, ("gmacs", "latency_ms"), ("GMACs per image", "latency, ms per image (batch 1)")):
        ax.scatter([r[cost] for r in first.values()], [r["top1"] for r in first.values()], color="0.6",
                   label="candidates")
        front = sorted((first[k][cost], first[k]["top1"], k) for k in fronts[cost])
        ax.plot([f[0] for f in front], [f[1] for f in front], "o-", color="tab:red", label="Pareto front")
        for x, y, k in front:
            ax.annotate(k, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set(xlabel=label, ylabel="val top-1 % (rung 0)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
