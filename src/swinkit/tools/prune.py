"""`swinkit prune`: structured pruning of a Swin's attention heads and MLP hidden units.

    swinkit prune --checkpoint RUN --heads 0.25 --mlp 0.25 --out PRUNED     # PRUNED/best.pt + config.json
    swinkit eval --checkpoint PRUNED --data DATA                              # every command reads it
    swinkit train --pretrained PRUNED --data DATA --recipe small --epochs 3   # fine-tunes the pruned architecture

Every block of a Swin V1 / V2 classifier (or of a segmenter's Swin backbone) loses floor(ratio * n) of its n heads
(at least one kept) and floor(ratio * m) of its m MLP hidden units, the least important first. What is left is a
smaller dense model: its config records each block's heads and MLP width (SwinConfig.block_heads, block_mlp; a head
keeps its width, stage width // num_heads), so it rebuilds from the config alone.

Importance is weight magnitude, no data needed: a head scores ||its rows of qkv (q, k, v and their biases)|| *
||its columns of proj||, a hidden unit ||its fc1 row and bias|| * ||its fc2 column|| (what it reads times what it
writes). The tensors that go with a head or unit (the dependency graph) are swinkit.nn.blocks.select_heads and
select_hidden: qkv rows of q, k and v, proj columns, V1 bias-table columns, V2 logit scales, CPB MLP output rows and
q / v biases; fc1 rows and biases, fc2 columns. Python: `prune(model, heads=0.25, mlp=0.25)` (in place).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn as nn

from ..config import SwinConfig
from ..io.files import OutputError, atomic_write, check_outputs, write_json
from ..models.swin import SwinTransformer, SwinTrunk
from ..nn.attention import WindowAttention
from ..nn.blocks import Mlp, select_heads, select_hidden


def check_ratio(value: float, flag: str) -> None:
    """A ValueError unless 0 <= value < 1 (`flag`: --heads or --mlp)."""
    what = "heads" if flag == "--heads" else "MLP hidden units"
    if not 0 <= value < 1:
        raise ValueError(f"{flag} must be in [0, 1) (the share of each block's {what} removed), got {value}")


def head_scores(attn: WindowAttention) -> torch.Tensor:
    """(heads,) importance: the norm of each head's q, k, v rows of qkv (with their biases) times that of its proj
    columns."""
    h = attn.num_heads
    d = attn.qkv.out_features // (3 * h)
    reads = [attn.qkv.weight.view(3, h, d, -1).transpose(0, 1).reshape(h, -1)]  # (h, 3 * d * C)
    biases = (attn.q_bias, attn.v_bias) if attn.v2 else (attn.qkv.bias,)
    reads += [b.reshape(-1, h, d).transpose(0, 1).reshape(h, -1) for b in biases if b is not None]
    writes = attn.proj.weight.view(attn.proj.out_features, h, d).transpose(0, 1).reshape(h, -1)  # (h, C * d)
    return torch.cat(reads, 1).norm(dim=1) * writes.norm(dim=1)


def hidden_scores(mlp: Mlp) -> torch.Tensor:
    """(hidden,) importance: the norm of each unit's fc1 row and bias times that of its fc2 column."""
    reads = mlp.fc1.weight if mlp.fc1.bias is None else torch.cat((mlp.fc1.weight, mlp.fc1.bias[:, None]), 1)
    return reads.norm(dim=1) * mlp.fc2.weight.norm(dim=0)


def keep_top(scores: torch.Tensor, ratio: float) -> list[int]:
    """The indices to keep, in their order: all but the floor(ratio * n) lowest scores, at least one (ties: the
    earlier index stays)."""
    n = len(scores)
    keep = n - min(int(ratio * n), n - 1)
    return sorted(torch.sort(scores, descending=True, stable=True).indices[:keep].tolist())


def swin_trunk(model: nn.Module) -> SwinTrunk:
    """The Swin V1/V2 stages of a classifier (the model itself) or of a model on a Swin backbone (segmentation)."""
    trunk = model if isinstance(model, SwinTrunk) else getattr(model, "backbone", None)
    if not isinstance(trunk, SwinTrunk) or type(trunk.cfg) is not SwinConfig:
        found = type(trunk.cfg).__name__ if isinstance(trunk, SwinTrunk) else type(model).__name__
        raise ValueError(f"swinkit prune takes a Swin V1/V2 classifier or a segmentation model on a Swin backbone, "
                         f"got {found}: prune a checkpoint of one of those")
    return trunk


@torch.no_grad()
def prune(model: nn.Module, heads: float = 0.0, mlp: float = 0.0) -> nn.Module:
    """Remove the share `heads` of each block's attention heads and `mlp` of its MLP hidden units, the least
    important first (see the module docstring), in place; the config (model.cfg, or the backbone's) records the new
    sizes. Returns the model."""
    check_ratio(heads, "--heads")
    check_ratio(mlp, "--mlp")
    trunk = swin_trunk(model)
    blocks = [list(stage.blocks) for stage in trunk.layers]
    if heads:
        other = sorted({trunk.cfg.mixer[i] for i, stage in enumerate(blocks) for b in stage
                        if not isinstance(b.attn, WindowAttention)})
        if other:
            raise ValueError(f"--heads prunes window attention heads; this model's mixer {', '.join(other)} has none "
                             "that can be pruned: pass --heads 0 to prune the MLPs alone")
    block_heads = [[trunk.cfg.block_size(i, j)[0] for j in range(len(stage))] for i, stage in enumerate(blocks)]
    for i, stage in enumerate(blocks):
        for j, blk in enumerate(stage):
            if heads:
                select_heads(blk.attn, keep_top(head_scores(blk.attn), heads))
                block_heads[i][j] = blk.attn.num_heads
            if mlp:
                select_hidden(blk.mlp, keep_top(hidden_scores(blk.mlp), mlp))
    block_mlp = [[blk.mlp.fc1.out_features for blk in stage] for stage in blocks]
    cfg = dataclasses.replace(trunk.cfg, block_heads=block_heads, block_mlp=block_mlp)
    if cfg.pruned:
        cfg.name = "custom"  # a variant's name stays only on the variant's architecture
    if trunk is not model:
        model.cfg = dataclasses.replace(model.cfg, backbone=cfg)
    trunk.cfg = cfg
    return model


def count(model: nn.Module) -> tuple[int, int, int]:
    """(the model's parameters, its Swin blocks' attention heads, their MLP hidden units)."""
    trunk = swin_trunk(model)
    blocks = [b for stage in trunk.layers for b in stage.blocks]
    return (sum(p.numel() for p in model.parameters()), sum(getattr(b.attn, "num_heads", 0) for b in blocks),
            sum(b.mlp.fc1.out_features for b in blocks))


def prune_checkpoint(checkpoint: str | Path, out: str | Path, heads: float = 0.0, mlp: float = 0.0,
                     overwrite: bool = False) -> dict:
    """Prune the model of a run directory or checkpoint (anything eval reads) and write it, with its task meta (class
    names, preprocessing), as a run directory `out` (best.pt and config.json) or, for an `out` ending in .pt, that
    file. Returns what config.json records of the pruning."""
    from .. import __version__
    from ..inference.load import load_trained

    check_ratio(heads, "--heads")
    check_ratio(mlp, "--mlp")
    out = Path(out)
    as_file = out.suffix in (".pt", ".pth")
    files = [out] if as_file else [out / "best.pt", out / "config.json"]
    check_outputs(files, [checkpoint], overwrite)
    loaded = load_trained(checkpoint)
    model = loaded.model
    before = count(model)
    prune(model, heads, mlp)
    after = count(model)
    config = model_config(model)
    ck = {"task": loaded.task.name, "config": config, **loaded.meta, "model": model.state_dict()}
    if not as_file:
        out.mkdir(parents=True, exist_ok=True)
    atomic_write(files[0], lambda p: torch.save(ck, p))
    info = {"from": str(checkpoint), "heads": heads, "mlp": mlp, "model": swin_trunk(model).cfg.describe(),
            **{f"{k}_before": v for k, v in zip(("params", "heads_total", "mlp_units"), before)},
            **{f"{k}_after": v for k, v in zip(("params", "heads_total", "mlp_units"), after)}, "out": str(files[0])}
    if not as_file:
        write_json(files[1], {"task": loaded.task.name, "model": config, **loaded.meta, "pruned": info,
                              "command": sys.argv, "versions": {"swinkit": __version__, "torch": torch.__version__}})
    return info


def model_config(model: nn.Module) -> dict:
    """The "config" of a checkpoint of `model`, as its task writes it (a classifier's records its distillation
    head)."""
    if isinstance(model, SwinTransformer):
        from ..train.distill import classifier_config

        return classifier_config(model)
    return model.cfg.to_dict()


# ----------------------------------------------------------------------------------------------------------
# `swinkit prune`


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--checkpoint", required=True, help="run directory (its best.pt) or any Swin classifier or "
                                                            "segmenter checkpoint swinkit reads")
    parser.add_argument("--heads", type=float, default=0.0, help="share of each block's attention heads removed, in "
                                                                 "[0, 1) (at least one head stays)")
    parser.add_argument("--mlp", type=float, default=0.0, help="share of each block's MLP hidden units removed, in "
                                                               "[0, 1)")
    parser.add_argument("--out", required=True, type=Path, help="run directory to write (best.pt + config.json), or a "
                                                                ".pt file")
    parser.add_argument("--overwrite", action="store_true", help="replace --out's files if they exist")


def run(args: argparse.Namespace) -> int:
    try:
        info = prune_checkpoint(args.checkpoint, args.out, args.heads, args.mlp, args.overwrite)
    except (OutputError, ValueError, FileNotFoundError) as e:  # CheckpointError is a ValueError
        print(f"swinkit prune: {e}", file=sys.stderr)
        return 2
    print(f"wrote {info['out']}: {info['model']}\n"
          f"params {info['params_before']:,} -> {info['params_after']:,} "
          f"({100 * info['params_after'] / info['params_before']:.1f}%), heads {info['heads_total_before']} -> "
          f"{info['heads_total_after']}, MLP units {info['mlp_units_before']} -> {info['mlp_units_after']}")
    return 0
