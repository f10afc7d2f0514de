"""The family registry (swinkit.families): a family registered from outside swinkit goes through create, save, load,
inspect, convert and export; every command takes what load_model takes (an official SwinIR file, a transformers model
directory, each family's foreign format); and a command reads its checkpoint from disk once."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import swinkit
from swinkit import families
from swinkit.cli import main
from swinkit.io import files

from conftest import SHARED, randomize_

FIXTURES = SHARED / "fixtures"
needs_fixtures = pytest.mark.skipif(not (FIXTURES / "swinir").is_dir(), reason="needs ../shared/fixtures")


# ---- a family defined here, in the test, with no change to any swinkit file


@dataclasses.dataclass
class ToyConfig:
    name: str = "custom"
    img_size: tuple = (16, 16)
    in_chans: int = 3
    num_classes: int = 3
    width: int = 4
    patch: tuple = (4, 4)  # export steps its second test size by patch x 2^(stages - 1)
    depths: tuple = (1,)

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ToyConfig":
        return cls(**{**TOY_VARIANTS[name]["config"], "name": name, **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "ToyConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


TOY_VARIANTS = {"toy_s": {"config": {"width": 4}, "paper_params_m": None, "paper_gmacs": None},
                "toy_m": {"config": {"width": 8}, "paper_params_m": None, "paper_gmacs": None}}


class ToyNet(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg, self.num_classes = cfg, cfg.num_classes
        self.toy_conv = nn.Conv2d(cfg.in_chans, cfg.width, 4, stride=4)
        self.toy_head = nn.Linear(cfg.width, cfg.num_classes)

    def forward(self, x):
        return self.toy_head(self.toy_conv(x).mean((2, 3)))  # (B, classes)


def toy_config_of(raw) -> ToyConfig:
    if "swinkit_config" in raw.meta:
        return ToyConfig.from_dict(json.loads(raw.meta["swinkit_config"]))
    w = raw.state_dict["toy_conv.weight"]  # what the weights say
    return ToyConfig(in_chans=w.shape[1], width=w.shape[0], num_classes=raw.state_dict["toy_head.weight"].shape[0])


def toy_load(raw, strict=True, use_ema=False, class_map=None, **overrides):
    model = ToyNet(dataclasses.replace(toy_config_of(raw), **overrides))
    model.load_state_dict(raw.state_dict, strict=strict)
    return model.eval()


def toy_convert(raw, dst, fmt, meta, hints=None) -> str:
    files.save_state_dict(raw.state_dict, toy_config_of(raw), dst, None, meta)
    return "swinkit, toy"


def toy_count(name: str) -> dict:
    model = ToyNet(ToyConfig.from_name(name))
    return dict(name=name, version=1, size=[16, 16], window=0, params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                gmacs=0.0, paper_params_m=None, paper_gmacs=None)


TOY = families.Family(
    "toy", "toy model", "a family defined in tests/test_families.py", ToyConfig, TOY_VARIANTS, lambda: (ToyNet,),
    "classify", ("classify", "NCHW"), ("swinkit",), lambda sd: any(k.startswith("toy_conv.") for k in sd), toy_load,
    lambda raw: f"file:     {raw.path}\nformat:   swinkit (toy, width {toy_config_of(raw).width})", toy_convert,
    lambda model, path, class_names=None: files.save_state_dict(model.state_dict(), model.cfg, path, class_names) or path,
    lambda name, **kw: ToyNet(ToyConfig.from_name(name, **kw)), toy_count)


@pytest.fixture
def toy():
    families.register(TOY)
    yield TOY
    families.unregister(TOY)


def test_a_family_registered_from_outside_runs_through_every_command(toy, tmp_path, capsys):
    torch.manual_seed(0)
    model = swinkit.create("toy_m")  # create: the registry's variant table
    assert isinstance(model, ToyNet) and model.cfg.width == 8
    swinkit.save_model(model, tmp_path / "toy.safetensors")  # save: the family's writer
    loaded = swinkit.load_model(tmp_path / "toy.safetensors")  # load: recognised by the family's detect
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    torch.save(model.state_dict(), tmp_path / "bare.pth")  # a bare state dict: the config from the weights
    assert swinkit.load_model(tmp_path / "bare.pth").cfg.width == 8
    assert main(["inspect", str(tmp_path / "toy.safetensors")]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "format:   swinkit (toy, width 8)"
    assert main(["convert", str(tmp_path / "bare.pth"), str(tmp_path / "back.safetensors")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'back.safetensors'} (swinkit, toy)"
    assert all(torch.equal(a, b) for a, b in zip(swinkit.load_model(tmp_path / "back.safetensors").state_dict()
                                                 .values(), model.state_dict().values()))
    pytest.importorskip("onnxruntime")
    assert main(["export", "--checkpoint", str(tmp_path / "toy.safetensors"), "--out", str(tmp_path / "toy.onnx"),
                 "--img-size", "16", "16"]) == 0
    from swinkit.tools.export import OnnxModel

    onnx = OnnxModel(tmp_path / "toy.onnx")
    assert onnx.meta["task"] == "classify" and onnx.meta["model"] == "ToyNet"
    with torch.no_grad():
        np.testing.assert_allclose(onnx(x.numpy()), model(x).numpy(), rtol=0, atol=1e-5 * model(x).abs().max().item())
    assert toy.count("toy_s")["params_m"] == (3 * 4 * 16 + 4 + 4 * 3 + 3) / 1e6  # the counter `swinkit models` uses


# ---- every command takes every file load_model takes


@needs_fixtures
def test_inspect_and_convert_an_official_swinir_file(tmp_path, capsys):
    path = FIXTURES / "swinir" / "classical_x2.pth"
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"file:     {path}" and out[1].startswith("format:   official (SwinIR)")
    assert main(["convert", str(path), str(tmp_path / "x2.safetensors")]) == 0
    io = torch.load(FIXTURES / "swinir" / "classical_x2.io.pt", weights_only=True)
    with torch.no_grad():
        out = swinkit.load_model(tmp_path / "x2.safetensors")(io["input"])
    assert (out - io["output"]).abs().max() <= 1e-4 * io["output"].abs().max()  # the fixtures README's bar


def hf_directory(tmp_path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                  window_size=4, num_labels=3, id2label={0: "ant", 1: "bee", 2: "cow"},
                                  label2id={"ant": 0, "bee": 1, "cow": 2})
    model = randomize_(transformers.SwinForImageClassification(cfg), std=0.2).eval()
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def test_eval_and_predict_take_a_transformers_directory(tmp_path, capsys):
    folder = hf_directory(tmp_path)
    rng = np.random.default_rng(0)
    for c in ("ant", "bee", "cow"):
        (tmp_path / "data" / "val" / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "data" / "val" / c / "0.png")
    assert main(["eval", "--checkpoint", str(folder), "--data", str(tmp_path / "data"), "--json",
                 "--confusion", str(tmp_path / "c.png")]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 3
    assert main(["predict", "--checkpoint", str(folder), str(tmp_path / "data" / "val" / "ant" / "0.png"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["class"] in ("ant", "bee", "cow")


@needs_fixtures
@pytest.mark.parametrize("file, kind", [("official/official_v1_tiny.pth", "official (Swin V1)"),
                                        ("video_swin/backbone_tiny.pth", "official (Video Swin)"),
                                        ("swin_unet/unet_tiny.pth", "official (Swin-UNet, Swin V1)"),
                                        ("swinir/lightweight_x3.pth", "official (SwinIR)")])
def test_each_familys_foreign_file_goes_through_inspect_convert_and_export(file, kind, tmp_path, capsys):
    """inspect and convert from the CLI; export reads what `swinkit export --checkpoint` reads (load_for_export),
    and writes a file for one of them (the export itself is each family's, tested in test_export)."""
    from swinkit.tools.export import OnnxModel, load_for_export

    path = FIXTURES / file
    assert main(["inspect", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(f"format:   {kind}")
    assert main(["convert", str(path), str(tmp_path / "m.safetensors")]) == 0
    capsys.readouterr()
    a, b = swinkit.load_model(path), swinkit.load_model(tmp_path / "m.safetensors")
    assert type(a) is type(b) and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                                        b.state_dict().values()))
    model, meta = load_for_export(str(path))
    assert type(model) is type(a) and families.family_of_model(model).task == families.family_of_model(a).task
    if "swinir" in file:
        pytest.importorskip("onnxruntime")
        assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")]) == 0
        assert OnnxModel(tmp_path / "m.onnx").meta["model"] == "SwinIR"


# ---- one read per command


@pytest.fixture
def reads(monkeypatch):
    """The number of times a checkpoint file is read from disk (torch.load or safetensors)."""
    count = {"n": 0}
    for name in ("torch_load", "safetensors_load"):
        real = getattr(files, name)

        def counted(*args, real=real, **kwargs):
            count["n"] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(files, name, counted)
    return count


def test_each_command_reads_its_checkpoint_once(reads, tmp_path, capsys):
    from swinkit.io.raw import forget

    torch.manual_seed(0)
    model = swinkit.create_model("swin_t", img_size=16, patch_size=2, window_size=4, embed_dim=16, depths=(1, 1),
                                 num_heads=(1, 2), num_classes=3).eval()
    data = {"img_size": 16, "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3}
    (tmp_path / "run").mkdir()
    torch.save({"task": "classify", "model": model.state_dict(), "config": model.cfg.to_dict(),
                "class_names": ["a", "b", "c"], "data": data}, tmp_path / "run" / "best.pt")
    for c in "abc":
        (tmp_path / "d" / "val" / c).mkdir(parents=True)
        Image.fromarray(np.full((16, 16, 3), 60 * "abc".index(c), np.uint8)).save(tmp_path / "d" / "val" / c / "0.png")
    img = str(tmp_path / "d" / "val" / "a" / "0.png")
    commands = {"eval": ["eval", "--checkpoint", str(tmp_path / "run"), "--data", str(tmp_path / "d")],
                "predict": ["predict", "--checkpoint", str(tmp_path / "run"), img],
                "inspect": ["inspect", str(tmp_path / "run")],
                "convert": ["convert", str(tmp_path / "run" / "best.pt"), str(tmp_path / "m.safetensors")],
                "predict foreign": ["predict", "--checkpoint", str(tmp_path / "m.safetensors"), img]}
    for name, argv in commands.items():
        forget()  # as a fresh process
        reads["n"] = 0
        assert main(argv) == 0, name
        assert reads["n"] == 1, name
    capsys.readouterr()
