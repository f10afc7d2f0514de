"""CSWin and PoolFormer (models/cswin.py, models/poolformer.py, io/formats/cswin.py, poolformer.py, mapped.py): the
official code's checkpoints (../shared/fixtures/cswin, poolformer) load with no hints and give its logits, convert back
to the very same tensors, swinkit's own files round-trip, the models run at any size, `swinkit models` lists the named
variants with their published figures, and broken files fail with errors that name what is wrong."""
import pytest
import torch

import swinkit
from swinkit import counting, families
from swinkit.cli import main
from swinkit.config import CSWIN_VARIANTS, POOLFORMER_VARIANTS, CSWinConfig, PoolFormerConfig
from swinkit.io.files import CheckpointError
from swinkit.io.formats import cswin, poolformer
from swinkit.models.cswin import CSWinTransformer
from swinkit.models.poolformer import PoolFormer

from conftest import SHARED, randomize_

FIXTURES = SHARED / "fixtures"
# family -> (fixture stem, the key the official file keeps its state dict under, model class, two blocks' tensors)
CASES = {
    "cswin": ("cswin/cswin_tiny", "state_dict_ema", CSWinTransformer, ("stage2.0.qkv.weight", "stage2.1.qkv.weight")),
    "poolformer": ("poolformer/poolformer_tiny", None, PoolFormer,
                   ("network.0.0.mlp.fc1.weight", "network.0.1.mlp.fc1.weight")),
}
needs_fixtures = pytest.mark.skipif(not all((FIXTURES / c[0]).with_suffix(".pth").exists() for c in CASES.values()),
                                    reason="needs ../shared/fixtures/cswin and poolformer")
family_case = pytest.mark.parametrize("family", list(CASES))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - b| relative to the logits' scale (the fixtures README's bar is 1e-4)."""
    return ((out - ref).abs().max() / max(1.0, ref.abs().max().item())).item()


def fixture(family: str) -> tuple:
    stem, wrapper, cls, _ = CASES[family]
    path = (FIXTURES / stem).with_suffix(".pth")
    obj = torch.load(path, weights_only=True)
    return path, obj[wrapper] if wrapper else obj, torch.load(FIXTURES / f"{stem}.io.pt", weights_only=True)


def logits(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# ---- parity with the official code


@needs_fixtures
@family_case
def test_official_file_loads_with_no_hints_and_gives_the_official_logits(family):
    path, _, io = fixture(family)
    model = swinkit.load_model(path)
    assert type(model) is CASES[family][2]
    assert rel_err(logits(model, io["input"]), io["logits"]) <= 1e-4


@needs_fixtures
@family_case
def test_a_wrong_key_fails_the_logits_check(family, tmp_path):
    """Two blocks' tensors swapped: the tolerance above is tight enough to see it."""
    _, sd, io = fixture(family)
    a, b = CASES[family][3]
    sd = {**sd, a: sd[b], b: sd[a]}
    torch.save(sd, tmp_path / "swapped.pth")
    assert rel_err(logits(swinkit.load_model(tmp_path / "swapped.pth"), io["input"]), io["logits"]) > 1e-2


@needs_fixtures
@family_case
def test_official_layout_converts_back_to_the_same_tensors(family, tmp_path, capsys):
    path, sd, io = fixture(family)
    assert main(["convert", str(path), str(tmp_path / "m.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "back.pth"), "--to", "official"]) == 0
    title = {"cswin": "CSWin", "poolformer": "PoolFormer"}[family]
    assert capsys.readouterr().out.splitlines()[-1].endswith(f"(official, {title}, custom)")
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    wrapper = CASES[family][1]
    if wrapper:  # written as the released files are
        assert list(back) == [wrapper]
        back = back[wrapper]
    assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)  # same keys, order and values
    model = swinkit.load_model(tmp_path / "m.safetensors")  # swinkit's file keeps the config it was read with
    assert type(model) is CASES[family][2] and rel_err(logits(model, io["input"]), io["logits"]) <= 1e-4


@needs_fixtures
def test_cswin_file_of_any_wrapper_and_inspect(tmp_path, capsys):
    path, sd, io = fixture("cswin")
    for name, obj in (("bare", sd), ("state_dict", {"state_dict": sd}), ("model", {"model": sd, "epoch": 3})):
        torch.save(obj, tmp_path / f"{name}.pth")
        assert rel_err(logits(swinkit.load_model(tmp_path / f"{name}.pth"), io["input"]), io["logits"]) <= 1e-4, name
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "format:   official (CSWin)" and "  num_heads: [2, 4, 8, 16]" in out
    assert out[-2].startswith("guessed:  num_heads, split_size, img_size (not recorded in the checkpoint: ")
    # what the weights cannot say is set by hints: other heads give other logits
    model = swinkit.load_model(path, num_heads=[2, 2, 4, 8], split_size=[1, 2, 2, 2], img_size=64)
    assert model.cfg.num_heads == (2, 2, 4, 8) and model.cfg.split_size == (1, 2, 2, 2)
    assert rel_err(logits(model, io["input"]), io["logits"]) > 1e-2


# ---- swinkit's layout and any input size


def small(family: str):
    if family == "cswin":  # the defaults a file of unknown heads and split sizes gets
        cfg = CSWinConfig(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(2, 4, 8, 16), split_size=(1, 2, 0, 0),
                          num_classes=5, img_size=64)
        return randomize_(CSWinTransformer(cfg), std=0.2).eval()
    cfg = PoolFormerConfig(dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), num_classes=5, mlp_ratio=3)
    return randomize_(PoolFormer(cfg), std=0.2).eval()


@family_case
def test_swinkit_files_round_trip(family, tmp_path):
    model, x = small(family), torch.randn(2, 3, 45, 58)
    swinkit.save_model(model, tmp_path / "m.safetensors")
    back = swinkit.load_model(tmp_path / "m.safetensors")
    assert type(back) is type(model) and back.cfg == model.cfg
    assert torch.equal(logits(back, x), logits(model, x))
    torch.save(model.state_dict(), tmp_path / "bare.pth")  # no config: the weights (and defaults) tell it
    bare = swinkit.load_model(tmp_path / "bare.pth")
    assert type(bare) is type(model) and torch.equal(logits(bare, x), logits(model, x))
    assert families.family_of_model(model).name == family


@family_case
def test_any_size_and_batch(family):
    model = small(family)
    for shape in ((1, 3, 61, 47), (3, 3, 37, 90), (3, 3, 4, 4)):
        x = torch.randn(*shape)
        out = logits(model, x)
        assert out.shape == (shape[0], 5) and torch.isfinite(out).all()
        assert (logits(model, x[:1]) - out[:1]).abs().max() <= 1e-5 * out.abs().max()  # each image alone


def test_cswin_split_zero_is_half_the_map():
    """split_size 0 (what a file of unknown split sizes gets) is, at each map, the split of half its size."""
    a = small("cswin")
    x = torch.randn(2, 3, 64, 64)  # stage 3: a 4 x 4 map
    b = CSWinTransformer(CSWinConfig(**{**a.cfg.to_dict(), "split_size": (1, 2, 2, 2)}))
    b.load_state_dict(a.state_dict())
    assert torch.equal(logits(a, x), logits(b, x))


# ---- telling the families apart


@needs_fixtures
def test_each_layout_goes_to_its_own_family(tmp_path):
    seen = {}
    for family in CASES:
        _, sd, _ = fixture(family)
        seen[f"official {family}"] = (families.family_of_state_dict(sd).name, family)
        seen[f"swinkit {family}"] = (families.family_of_state_dict(small(family).state_dict()).name, family)
    swin = torch.load(FIXTURES / "official" / "official_v1_tiny.pth", weights_only=True)["model"]
    seen["official swin"] = (families.family_of_state_dict(swin).name, "swin")
    mixed = swinkit.create_model("swin_t", img_size=64, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4,
                                 mixer=["cswin", "global"], split_size=[2, 4])  # an ablation: Swin's merging
    seen["swin with cswin mixers"] = (families.family_of_state_dict(mixed.state_dict()).name, "swin")
    assert all(got == want for got, want in seen.values()), seen


# ---- named variants and their published figures


def test_named_variants_build_and_describe_themselves():
    assert isinstance(swinkit.create("poolformer_s12", num_classes=3), PoolFormer)
    with torch.device("meta"):
        model = swinkit.create("cswin_tiny_224")
    assert isinstance(model, CSWinTransformer) and model.cfg.describe() == "cswin_tiny_224"
    assert PoolFormerConfig.from_name("poolformer_s36").layer_scale == 1e-6  # the official S36 / M36 / M48
    assert CSWinConfig.from_name("cswin_base_384", img_size=256).describe() == "cswin_base_384 at 256x256"
    with pytest.raises(ValueError, match=r"unknown CSWin model 'cswin_xl'; choose one of \['cswin_tiny_224'"):
        CSWinConfig.from_name("cswin_xl")


def test_measured_size_is_the_published_one():
    """Built on the meta device, the variants have the published parameters and MACs: the architecture's shape. The
    CSWin README rounds CSWin-T's 22.3M (what its own code builds) to 23M and CSWin-S's 34.6M to 35M."""
    for name, measure, rtol in (("cswin_tiny_224", counting.measure_cswin_variant, 0.031),
                                ("cswin_base_224", counting.measure_cswin_variant, 0.01),
                                ("poolformer_s12", counting.measure_poolformer_variant, 0.01),
                                ("poolformer_s36", counting.measure_poolformer_variant, 0.01)):
        r = measure(name)
        assert r["params_m"] == pytest.approx(r["paper_params_m"], rel=rtol), name
        assert r["gmacs"] == pytest.approx(r["paper_gmacs"], rel=0.01), name


def test_models_command_lists_the_variants_with_published_figures(monkeypatch, tmp_path, capsys):
    from swinkit.tools import measure

    by_name = {f.name: f for f in families.TABLE_ORDER}
    monkeypatch.setattr(measure, "TABLE_ORDER", [by_name["cswin"], by_name["poolformer"]])
    monkeypatch.setenv("SWINKIT_CACHE", str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    for table in (CSWIN_VARIANTS, POOLFORMER_VARIANTS):
        for name, v in table.items():
            assert rows[name][5] == f"{v['paper_params_m']:.1f}" and rows[name][7] == f"{v['paper_gmacs']:.1f}"
            assert f"{name} {v['paper_top1']}" in out  # top-1 in the family's note
    assert rows["cswin_tiny_224"][2:5] == ["224x224", "1-2-7", "22.3"]


# ---- bad input


@needs_fixtures
def test_missing_and_unknown_keys_are_named(tmp_path):
    _, sd, _ = fixture("cswin")
    for drop, message in (("stage2.1.qkv.weight", r"missing stage2\.1\.qkv\.weight; unexpected none"),
                          ("stage1_conv_embed.0.weight", r"stage1_conv_embed\.0\.weight is missing")):
        torch.save({"state_dict_ema": {k: v for k, v in sd.items() if k != drop}}, tmp_path / "m.pth")
        with pytest.raises(CheckpointError, match=message):
            swinkit.load_model(tmp_path / "m.pth")
    torch.save({**sd, "stage1.0.attns.0.relative_bias": torch.zeros(3)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"1 keys of this official CSWin checkpoint have no place in swinkit: "
                                              r"stage1\.0\.attns\.0\.relative_bias\. To skip them"):
        swinkit.load_model(tmp_path / "extra.pth")
    with pytest.warns(UserWarning, match="skipped"):
        swinkit.load_model(tmp_path / "extra.pth", strict=False)


def test_variant_shapes_take_the_variant_and_the_file_name_decides_between_equal_shapes():
    with torch.device("meta"):
        model = CSWinTransformer(CSWinConfig.from_name("cswin_base_384"))
    ours, unknown = cswin.FORMAT.to_swinkit(cswin.FORMAT.to_official(model.state_dict()))
    assert not unknown
    d, guessed = cswin.infer(ours, {}, "cswin_base_384")
    assert d["name"] == "cswin_base_384" and list(d["split_size"]) == [1, 2, 12, 12] and not guessed
    d, guessed = cswin.infer(ours, {}, "my_finetuned_model")
    assert d["name"] == "cswin_base_224" and guessed == ["split_size", "img_size"]
    with torch.device("meta"):
        pool = PoolFormer(PoolFormerConfig.from_name("poolformer_m36"))
    ours, _ = poolformer.FORMAT.to_swinkit(poolformer.FORMAT.to_official(pool.state_dict()))
    assert poolformer.infer(ours, {}, "x")[0]["layer_scale"] == 1e-6


def test_a_model_the_official_code_does_not_build_stays_in_swinkit_layout(tmp_path, capsys):
    model = PoolFormer(PoolFormerConfig(dims=(8, 16), depths=(1, 1), num_classes=2, norm="layernorm"))
    swinkit.save_model(model, tmp_path / "m.safetensors")
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "o.pth"), "--to", "official"]) == 2
    assert "norm='layernorm'): only swinkit's own layout holds it" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()
