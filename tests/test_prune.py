"""Structured pruning (swinkit.tools.prune, `swinkit prune`): shapes and parameter counts, equality with the unpruned
model whose removed heads and hidden units are zeroed, the kept heads, checkpoints every command reads, errors."""
import copy
import json
import re

import pytest
import torch

from conftest import color_folder, randomize_, tiny_config
from swinkit.cli import main
from swinkit.config import SwinConfig
from swinkit.inference.load import load_trained
from swinkit.models.swin import SwinTransformer
from swinkit.nn.blocks import head_channels
from swinkit.tools.prune import head_scores, hidden_scores, keep_top, prune
from swinkit.train.distill import load_classifier

CLI_ARCH = dict(img_size=16, patch_size=2, window_size=4, embed_dim=16, depths=(2, 1), num_heads=(2, 4),
                num_classes=3, drop_path_rate=0.0)


def model(version: int, **kw) -> SwinTransformer:
    return randomize_(SwinTransformer(tiny_config(version=version, **kw))).eval()


def blocks(m):
    return [b for stage in m.layers for b in stage.blocks]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float32 rounding relative to the output scale."""
    tol = 1e-5 * max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= tol


@pytest.mark.parametrize("version", [1, 2])
def test_shapes_and_parameter_count(version):
    m = model(version)
    p = prune(copy.deepcopy(m), heads=0.5, mlp=0.25)
    removed = 0
    for i, (b, q) in enumerate(zip(blocks(m), blocks(p))):
        C, h, d = b.attn.dim, b.attn.num_heads, b.attn.qkv.out_features // (3 * b.attn.num_heads)
        k, hidden = q.attn.num_heads, q.mlp.fc1.out_features
        assert (k, hidden) == (h - h // 2, b.mlp.fc1.out_features * 3 // 4)
        assert q.attn.qkv.weight.shape == (3 * k * d, C) and q.attn.proj.weight.shape == (C, k * d)
        assert q.mlp.fc1.weight.shape == (hidden, C) and q.mlp.fc2.weight.shape == (C, hidden)
        if version == 1:
            assert q.attn.relative_position_bias_table.shape[1] == k
            per_head = 3 * d * C + 3 * d + C * d + b.attn.relative_position_bias_table.shape[0]
        else:
            assert q.attn.logit_scale.shape == (k, 1, 1) and q.attn.cpb_mlp[2].weight.shape[0] == k
            assert q.attn.q_bias.shape == q.attn.v_bias.shape == (k * d,)
            per_head = 3 * d * C + 2 * d + C * d + 1 + b.attn.cpb_mlp[2].in_features
        removed += (h - k) * per_head + (b.mlp.fc1.out_features - hidden) * (2 * C + 1)
    count = lambda net: sum(t.numel() for t in net.parameters())  # noqa: E731
    assert count(p) == count(m) - removed
    rebuilt = SwinTransformer(SwinConfig.from_json(p.cfg.to_json()))  # the config alone gives the architecture
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in p.state_dict().items()}


@pytest.mark.parametrize("version", [1, 2])
def test_ratio_zero_changes_nothing(version):
    m = model(version)
    x = torch.randn(2, 3, 64, 64)
    p = prune(copy.deepcopy(m), heads=0.0, mlp=0.0)
    assert p.cfg.block_heads is None and p.cfg.block_mlp is None and not p.cfg.pruned
    assert torch.equal(p(x), m(x))


def masked(m, heads: float, mlp: float):
    """The unpruned model with the heads and hidden units that prune removes contributing zero (their proj and fc2
    columns zeroed)."""
    m = copy.deepcopy(m)
    with torch.no_grad():
        for b in blocks(m):
            if heads:
                drop = sorted(set(range(b.attn.num_heads)) - set(keep_top(head_scores(b.attn), heads)))
                b.attn.proj.weight[:, head_channels(b.attn, drop)] = 0
            units = sorted(set(range(b.mlp.fc1.out_features)) - set(keep_top(hidden_scores(b.mlp), mlp)))
            b.mlp.fc2.weight[:, units] = 0
    return m


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("path", ["plain", "windows"])
def test_pruning_equals_zeroing_the_removed_heads_and_units(version, path):
    m = model(version, inference_path=path)
    x = torch.randn(2, 3, 36, 28)  # padded, clamped and shifted windows
    for heads, mlp in ((0.5, 0.0), (0.75, 0.3)):
        p = prune(copy.deepcopy(m), heads, mlp)
        with torch.no_grad():
            close(p(x), masked(m, heads, mlp)(x))


def test_the_most_important_head_is_kept():
    m = model(1)
    strong = {}
    with torch.no_grad():
        for i, b in enumerate(blocks(m)):
            h = b.attn.num_heads
            strong[i] = (i + 1) % h  # a different head in each block
            ch = head_channels(b.attn, [strong[i]])
            inner = b.attn.qkv.out_features // 3
            b.attn.qkv.weight[ch + 2 * inner] *= 10  # its values
            b.attn.proj.weight[:, ch] *= 10  # and what it writes
    p = prune(copy.deepcopy(m), heads=0.9)  # one head left per block
    for i, (b, q) in enumerate(zip(blocks(m), blocks(p))):
        assert q.attn.num_heads == 1
        assert torch.equal(q.attn.proj.weight, b.attn.proj.weight[:, head_channels(b.attn, [strong[i]])])
        assert torch.equal(q.attn.relative_position_bias_table[:, 0], b.attn.relative_position_bias_table[:, strong[i]])


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_bad_ratios_are_exact_errors(value, tmp_path, capsys):
    heads = f"--heads must be in [0, 1) (the share of each block's heads removed), got {value}"
    mlp = f"--mlp must be in [0, 1) (the share of each block's MLP hidden units removed), got {value}"
    with pytest.raises(ValueError, match=f"^{re.escape(heads)}$"):
        prune(model(1), heads=value)
    with pytest.raises(ValueError, match=f"^{re.escape(mlp)}$"):
        prune(model(1), mlp=value)
    assert main(["prune", "--checkpoint", str(tmp_path), "--mlp", str(value), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"swinkit prune: {mlp}"
    assert not (tmp_path / "o").exists()


def test_config_validation():
    with pytest.raises(ValueError, match=re.escape("block_heads: expected one list per stage with one int >= 1 per "
                                                   "block (depths [2, 2, 2])")):
        tiny_config(block_heads=[[1, 1], [2, 2]])
    with pytest.raises(ValueError, match=re.escape("block_heads: stage 0 has num_heads[0]=2, a block cannot keep "
                                                   "more, got [3, 2]")):
        tiny_config(block_heads=[[3, 2], [4, 4], [8, 8]])
    with pytest.raises(ValueError, match="stage 0 uses the mixer 'pool', whose heads cannot be pruned"):
        tiny_config(mixer="pool", block_heads=[[1, 2], [4, 4], [8, 8]])
    full = tiny_config(block_heads=[[2, 2], [4, 4], [8, 8]], block_mlp=[[64] * 2, [128] * 2, [256] * 2])
    assert full.block_heads is None and full.block_mlp is None and full.swin_skeleton  # the unpruned sizes
    cfg = tiny_config(block_heads=[[1, 2], [4, 3], [8, 8]], block_mlp=[[64, 7], [128] * 2, [256] * 2])
    assert SwinConfig.from_json(cfg.to_json()) == cfg and not cfg.swin_skeleton
    assert cfg.block_size(1, 1) == (3, 128) and cfg.block_size(0, 1) == (2, 7)


def test_mixers_without_window_heads_prune_only_their_mlps():
    m = model(1, mixer="pool")
    with pytest.raises(ValueError, match="this model's mixer pool has none that can be pruned: pass --heads 0"):
        prune(m, heads=0.5)
    p = prune(copy.deepcopy(m), mlp=0.5)
    assert p.cfg.block_heads is None and [b.mlp.fc1.out_features for b in blocks(p)] == [32, 32, 64, 64, 128, 128]
    x = torch.randn(1, 3, 32, 32)
    close(p(x), masked(m, 0.0, 0.5)(x))


def write_run(path, version: int):
    """A checkpoint as `swinkit train` writes best.pt (model, config, task meta)."""
    m = randomize_(SwinTransformer(SwinConfig(version=version, **CLI_ARCH))).eval()
    path.mkdir()
    torch.save({"task": "classify", "config": m.cfg.to_dict(), "model": m.state_dict(),
                "class_names": ["blue", "green", "red"],
                "data": {"img_size": 16, "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.25] * 3}}, path / "best.pt")
    return m


@pytest.mark.parametrize("version", [1, 2])
def test_cli_checkpoint_round_trip(version, tmp_path, capsys):
    m = write_run(tmp_path / "run", version)
    out = tmp_path / "pruned"
    assert main(["prune", "--checkpoint", str(tmp_path / "run"), "--heads", "0.5", "--mlp", "0.5", "--out",
                 str(out)]) == 0
    assert "heads 8 -> 4, MLP units 256 -> 128" in capsys.readouterr().out
    expected = prune(copy.deepcopy(m), 0.5, 0.5)
    x = torch.randn(2, 3, 16, 16)
    loaded = load_trained(out)  # what eval, predict and export read
    assert loaded.meta["class_names"] == ["blue", "green", "red"] and loaded.meta["data"]["std"] == [0.25] * 3
    assert json.loads((out / "config.json").read_text())["task"] == "classify"
    tuned, _ = load_classifier(out)  # what train --pretrained reads
    with torch.no_grad():
        for net in (loaded.model, tuned):
            assert net.cfg.block_heads == expected.cfg.block_heads == ((1, 1), (2,))
            assert torch.equal(net(x), expected(x))
    assert main(["prune", "--checkpoint", str(tmp_path / "run"), "--heads", "0.5", "--out", str(out)]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err


def test_train_pretrained_fine_tunes_the_pruned_architecture(tmp_path, keep_threads):
    write_run(tmp_path / "run", 1)
    assert main(["prune", "--checkpoint", str(tmp_path / "run"), "--heads", "0.5", "--mlp", "0.5", "--out",
                 str(tmp_path / "pruned")]) == 0
    data = color_folder(tmp_path / "colors", 4, 2)
    assert main(["train", "--data", str(data), "--pretrained", str(tmp_path / "pruned"), "--out",
                 str(tmp_path / "ft"), "--recipe", "small", "--img-size", "16", "--epochs", "1", "--batch-size", "4",
                 "--threads", "1", "--workers", "0"]) == 0
    tuned = load_trained(tmp_path / "ft").model
    assert tuned.cfg.block_heads == ((1, 1), (2,)) and tuned.cfg.block_mlp == ((32, 32), (64,))
    pruned = torch.load(tmp_path / "pruned" / "best.pt", weights_only=True)["model"]
    assert {k: v.shape for k, v in tuned.state_dict().items()} == {k: v.shape for k, v in pruned.items()}


def test_a_segmentation_backbone_prunes_and_reloads(tmp_path):
    from swinkit.config import SegmentationConfig
    from swinkit.models.segmentation import SegmentationModel

    backbone = SwinConfig(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, img_size=32, num_classes=0,
                          window_mode="pad", drop_path_rate=0.0)
    m = randomize_(SegmentationModel(SegmentationConfig(backbone=backbone, num_classes=3, channels=16, aux_head=False,
                                                        aux_in_index=1, pool_scales=(1, 2)))).eval()
    torch.save({"task": "segment", "config": m.cfg.to_dict(), "model": m.state_dict()}, tmp_path / "seg.pt")
    assert main(["prune", "--checkpoint", str(tmp_path / "seg.pt"), "--heads", "0.5", "--mlp", "0.5", "--out",
                 str(tmp_path / "pruned")]) == 0
    expected = prune(copy.deepcopy(m), 0.5, 0.5)
    loaded = load_trained(tmp_path / "pruned").model
    assert loaded.cfg.backbone.block_heads == expected.backbone.cfg.block_heads == ((1, 1), (2, 2))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected(x))
