"""swinkit bench: behaviour of the measuring tool (peer models, arithmetic, interleaving, CSV/PNG), never speed."""
import csv
import itertools
import math

import pytest
import torch

from swinkit.tools import bench
from swinkit.cli import main
from swinkit.config import SwinConfig
from swinkit.counting import count_macs, count_params

TINY = dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, num_classes=7)  # swinkit_config
SPEC = dict(lib="swinkit", model="swin_t", img_size=32, batch_size=2, dtype="float32", mode="infer", device="cpu",
            threads=1, compile=False, warmup=1, iters=2, min_time=0.0, count_macs=True, swinkit_config=TINY)


def fake_run(lib, step_time_s, peak_mem_mb, mode="infer", img_size=224, batch_size=16, gflops=100.0,
             macs=4.5e9, error=None):
    """One per-repeat record as benchmark() collects it."""
    if error:
        return dict(lib=lib, mode=mode, img_size=img_size, batch_size=batch_size, error=error)
    return dict(lib=lib, model="swin_tiny_patch4_window7_224", mode=mode, img_size=img_size,
                batch_size=batch_size, step_time_s=step_time_s, peak_mem_mb=peak_mem_mb, model_mem_mb=108.0,
                params=28_288_354, macs_per_image=macs, matmul_gflops=gflops)


# ------------------------------------------------------------------------------------------ peer models

@pytest.mark.parametrize("name", ["swin_t", "swinv2_t"])
@pytest.mark.parametrize("lib", ["timm", "torchvision", "transformers"])
def test_peer_models_are_the_same_variant(lib, name):
    pytest.importorskip(lib)
    cfg = SwinConfig.from_name(name)
    ours, peer = bench.build_model("swinkit", name), bench.build_model(lib, name)
    extra = 0
    if lib == "torchvision" and cfg.version == 2:  # torchvision V2 keeps a k bias that its forward zeroes
        extra = sum(cfg.embed_dim * 2**i * d for i, d in enumerate(cfg.depths))
    assert count_params(peer) == count_params(ours) + extra  # the 1000-class heads included
    if lib == "torchvision":  # the builder's fixed stochastic depth equals the variant's rate
        assert peer.features[-1][-1].stochastic_depth.p == pytest.approx(cfg.drop_path_rate)


def test_timm_peer_is_built_for_the_requested_size():
    pytest.importorskip("timm")
    assert bench.build_model("timm", "swinv2_tiny_window16_256", 512).patch_embed.img_size == (512, 512)


def test_peer_names():
    assert bench.peer_name("torchvision", "swin_t") == "swin_t"
    assert bench.peer_name("torchvision", "swinv2_small_window8_256") == "swin_v2_s"
    assert bench.peer_name("torchvision", "swinv2_tiny_window16_256") is None
    assert bench.peer_name("timm", "swinv2_t") == "swinv2_tiny_window8_256"
    assert bench.peer_name("transformers", "swinv2_t") == "Swinv2ForImageClassification"
    assert bench.peer_name("transformers", "swin_b") == "SwinForImageClassification"
    assert bench.default_libs("swinv2_tiny_window16_256") == ["swinkit", "timm", "transformers"]
    with pytest.raises(ValueError, match="unknown library 'mmcv'; choose from swinkit, timm"):
        bench.peer_name("mmcv", "swin_t")
    with pytest.raises(ValueError, match="torchvision has no model equivalent to swinv2_tiny_window16_256"):
        bench.build_model("torchvision", "swinv2_tiny_window16_256")
    with pytest.raises(ValueError, match="unknown model 'swin_xl'"):
        bench.peer_name("timm", "swin_xl")


# ------------------------------------------------------------------------------------------ arithmetic

def test_matmul_limit_arithmetic():
    # the figures: 173 GFLOP/s and 4.5 GMACs = 9 GFLOP per image -> about 19 img/s
    assert bench.matmul_limit(173.0, 4.5e9) == pytest.approx(173e9 / 9e9)
    assert bench.matmul_limit(173.0, 4.5e9, "train") == pytest.approx(173e9 / 9e9 / bench.TRAIN_PASSES)


def test_matmul_rate_is_2n3_over_the_median_time(monkeypatch):
    ticks = itertools.accumulate([0.0, 9.0, 0.0, 0.5, 0.0, 0.25, 0.0, 1.0])  # warm-up 9 s, then 0.5, 0.25, 1 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
    assert bench.matmul_gflops(n=64, reps=3) == pytest.approx(2 * 64**3 / 0.5 / 1e9)


def test_fit_growth():
    pixels = [s**2 for s in (512, 1024, 1536, 2048)]
    assert bench.fit_growth(pixels, [3e-6 * p for p in pixels]) == pytest.approx((1.0, 1.0))
    assert bench.fit_growth(pixels, [1e-9 * p**2 for p in pixels]) == pytest.approx((2.0, 16.0))
    assert bench.fit_growth(pixels, [p**1.05 for p in pixels]) == pytest.approx((1.05, 16**0.05))


def test_summary_medians_and_ratios_from_given_timings():
    runs = [fake_run("swinkit", t, 100.0) for t in (1.0, 2.0, 1.25)]
    runs += [fake_run("timm", t, m) for t, m in ((2.0, 300.0), (1.5, 200.0), (3.0, 250.0))]
    runs += [fake_run("transformers", t, 400.0) for t in (4.0, 4.0, 1.6)]
    runs += [fake_run("torchvision", None, None, error="RuntimeError: out of memory")]
    rows = {r["lib"]: r for r in bench.summarize(runs)}
    ours, timm = rows["swinkit"], rows["timm"]
    assert ours["img_per_s"] == 16 / 1.25 and timm["img_per_s"] == 16 / 2.0 and rows["transformers"]["img_per_s"] == 4
    assert ours["speed_vs_best_peer"] == pytest.approx(2.0 / 1.25)  # best peer: timm, median 2.0 s
    assert ours["time_vs_best_peer"] == pytest.approx(1.25 / 2.0)
    assert timm["speed_vs_best_peer"] == 1.0 and rows["transformers"]["speed_vs_best_peer"] == 0.5
    assert ours["mem_vs_best_peer"] == pytest.approx(100 / 250) and timm["peak_mem_mb"] == 250
    assert ours["limit_img_per_s"] == pytest.approx(100e9 / 9e9)
    assert ours["fraction_of_limit"] == pytest.approx(12.8 / (100e9 / 9e9))
    assert ours["runs_img_per_s"] == "16 8 12.8" and ours["repeats"] == 3
    assert rows["torchvision"]["img_per_s"] is None and rows["torchvision"]["error"] == "RuntimeError: out of memory"
    assert ours["time_exponent"] is None  # one size: no growth


def test_summary_ratios_are_per_mode_and_growth_per_library():
    runs = [fake_run("swinkit", 1.0, 10.0, "train"), fake_run("timm", 2.0, 20.0, "train"),
            fake_run("timm", 1.0, 10.0, "infer")]
    rows = {(r["lib"], r["mode"]): r for r in bench.summarize(runs)}
    assert rows["swinkit", "train"]["speed_vs_best_peer"] == 2.0
    assert rows["swinkit", "train"]["limit_img_per_s"] == pytest.approx(100e9 / 9e9 / 3)
    sizes = (512, 1024, 2048)
    runs = [fake_run("swinkit", 1e-6 * s**2, 1e-5 * s**2, img_size=s, batch_size=1) for s in sizes]
    runs += [fake_run("timm", 1e-12 * s**4, 1e-5 * s**2, img_size=s, batch_size=1) for s in sizes]
    rows = {(r["lib"], r["img_size"]): r for r in bench.summarize(runs)}
    assert rows["swinkit", 2048]["time_growth_vs_linear"] == pytest.approx(1.0)
    assert rows["timm", 512]["time_exponent"] == pytest.approx(2.0)
    assert rows["timm", 512]["time_growth_vs_linear"] == pytest.approx(16.0)
    assert rows["swinkit", 2048]["time_vs_best_peer"] == pytest.approx(1e-6 / (1e-12 * 2048**2))


def test_csv_columns(tmp_path):
    rows = bench.summarize([fake_run("swinkit", 1.0, 100.0), fake_run("timm", 2.0, 200.0)])
    bench.write_csv(rows, tmp_path / "r" / "b.csv")
    with open(tmp_path / "r" / "b.csv") as f:
        reader = csv.DictReader(f)
        got = list(reader)
    assert reader.fieldnames == bench.COLUMNS
    assert [r["lib"] for r in got] == ["swinkit", "timm"]
    assert float(got[0]["speed_vs_best_peer"]) == 2.0 and got[0]["time_exponent"] == ""
    assert list(tmp_path.joinpath("r").iterdir()) == [tmp_path / "r" / "b.csv"]  # no temp file left


# ------------------------------------------------------------------------------------------ measuring

def test_fused_attention_macs_are_counted_like_explicit_attention():
    fused = bench.build_model("swinkit", "swin_t", 32, **TINY).eval()
    explicit = bench.build_model("swinkit", "swin_t", 32, **TINY, fused_attn=False).eval()
    x = torch.randn(1, 3, 32, 32)
    assert bench.forward_macs(fused, x) == bench.forward_macs(explicit, x) == count_macs(explicit, (32, 32))


def test_measure_reports_time_memory_params_and_macs():
    out = bench.measure(SPEC)
    model = bench.build_model("swinkit", "swin_t", 32, **TINY, fused_attn=False).eval()
    assert out["iters"] == 2 and out["step_time_s"] > 0 and out["peak_mem_mb"] >= 0
    assert out["params"] == count_params(model)
    assert out["macs_per_image"] == count_macs(model, (32, 32))
    own = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    assert out["model_mem_mb"] == pytest.approx(own / 2**20)


def test_measure_isolated_runs_in_a_fresh_process_and_reports_errors():
    out = bench.measure_isolated(dict(SPEC, mode="train", iters=1, count_macs=False), timeout=120)
    model = bench.build_model("swinkit", "swin_t", **TINY)
    assert out["iters"] == 1 and out["params"] == count_params(model) and "macs_per_image" not in out
    # a training step holds at least the gradients and AdamW's two moments above the model
    assert out["peak_mem_mb"] >= 3 * out["model_mem_mb"]
    bad = bench.measure_isolated(dict(SPEC, lib="torchvision", model="swinv2_tiny_window16_256"), timeout=120)
    assert bad == {"error": "ValueError: torchvision has no model equivalent to swinv2_tiny_window16_256; "
                            f"torchvision has {sorted(bench.TORCHVISION_NAMES)}"}


def test_measure_with_the_tuned_allocator():
    out = bench.measure_isolated(dict(SPEC, allocator="tuned", count_macs=False), timeout=120)
    assert out["iters"] == 2 and out["step_time_s"] > 0 and out["peak_mem_mb"] >= 0


def test_child_environment_selects_timm_attention_path(monkeypatch):
    monkeypatch.setenv("TIMM_FUSED_ATTN", "2")
    assert "TIMM_FUSED_ATTN" not in bench._child_env("timm", 2)
    env = bench._child_env("timm-sdpa", 3)
    assert env["TIMM_FUSED_ATTN"] == "2" and env["OMP_NUM_THREADS"] == "3"


@pytest.fixture
def fake_measurements(monkeypatch):
    """measure_isolated replaced by a recorder: swinkit takes 1 s, timm 2 s, torchvision fails."""
    calls = []

    def fake(spec, timeout=None):
        calls.append((spec["lib"], spec["mode"], spec["img_size"], spec["count_macs"]))
        if spec["lib"] == "torchvision":
            return {"error": "killed by signal 9 (out of memory?)"}
        t = {"swinkit": 1.0, "timm": 2.0}[spec["lib"]] * (spec["img_size"] / 64) ** 2
        return dict(step_time_s=t, peak_mem_mb=100 * t, model_mem_mb=1.0, params=10, macs_per_image=1e6)

    monkeypatch.setattr(bench, "measure_isolated", fake)
    monkeypatch.setattr(bench, "matmul_gflops", lambda device, dtype: 50.0)
    return calls


def test_benchmark_interleaves_libraries_and_drops_failures(fake_measurements):
    rows = bench.benchmark("swin_t", batch_size=4, modes=("infer", "train"), repeats=2,
                           libs=["swinkit", "timm", "torchvision"], log=lambda *a: None)
    first = [("swinkit", "infer", 224, True), ("timm", "infer", 224, True), ("torchvision", "infer", 224, True),
             ("swinkit", "train", 224, True), ("timm", "train", 224, True), ("torchvision", "train", 224, True)]
    second = [(lib, mode, 224, False) for mode in ("infer", "train") for lib in ("swinkit", "timm")]
    assert fake_measurements == first + second
    by = {(r["lib"], r["mode"]): r for r in rows}
    assert by["swinkit", "infer"]["speed_vs_best_peer"] == 2.0 and by["swinkit", "infer"]["repeats"] == 2
    assert by["torchvision", "train"]["error"] == "killed by signal 9 (out of memory?)"
    assert by["timm", "train"]["lib_model"] == "swin_tiny_patch4_window7_224"
    assert by["swinkit", "infer"]["matmul_gflops"] == 50.0 and by["swinkit", "infer"]["threads"] >= 1


def test_cli_throughput_and_sweep_write_csv_and_png(fake_measurements, tmp_path, capsys):
    import matplotlib.image

    assert main(["bench", "--model", "swin_t", "--libs", "swinkit,timm", "--repeats", "1", "--mode", "both",
                 "--threads", "2", "--out", str(tmp_path), "--name", "t"]) == 0
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["lib"], r["mode"], r["threads"]) for r in rows] == [
        ("swinkit", "infer", "2"), ("timm", "infer", "2"), ("swinkit", "train", "2"), ("timm", "train", "2")]
    assert matplotlib.image.imread(tmp_path / "t.png").ndim == 3 and {r["allocator"] for r in rows} == {"system"}
    assert main(["bench", "--model", "swin_t", "--libs", "swinkit,timm", "--repeats", "1", "--allocator", "tuned",
                 "--out", str(tmp_path)]) == 0
    with open(tmp_path / "swin_tiny_patch4_window7_224_224_b16_float32_infer_cpu_tuned.csv") as f:
        assert [(r["lib"], r["allocator"]) for r in csv.DictReader(f)] == [("swinkit", "tuned"), ("timm", "tuned")]
    assert main(["bench", "--model", "swinv2_tiny_window16_256", "--sweep", "64", "128", "256",
                 "--batch-size", "1", "--repeats", "1", "--out", str(tmp_path)]) == 0
    stem = "swinv2_tiny_window16_256_sweep64-256_b1_float32_infer_cpu"
    with open(tmp_path / f"{stem}.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["lib"], r["img_size"]) for r in rows} == {(lib, str(s)) for lib in ("swinkit", "timm")
                                                          for s in (64, 128, 256)}
    assert all(math.isclose(float(r["time_exponent"]), 1.0) for r in rows)
    assert matplotlib.image.imread(tmp_path / f"{stem}.png").ndim == 3
    assert "swinkit: time ~ pixels^1.00 (fitted growth 1.00x linear)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--libs", "swinkit,mmcv"], "unknown --libs ['mmcv']; choose from swinkit,timm,timm-sdpa"),
    (["--batch-size", "0"], "--batch-size, --repeats, --img-size and --sweep sizes must be >= 1"),
    (["--swinkit-config", "fused_attn"], "expected KEY=VALUE (a SwinConfig field), got 'fused_attn'"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv])
    assert message in str(e.value.code) + capsys.readouterr().err


def test_paired_script_builds_timm_sdpa_in_process_and_restores_timms_default():
    """benchmarks/paired.py holds every library in one process: timm-sdpa must take timm's SDPA path, and the
    timm model built after it timm's default explicit path, as TIMM_FUSED_ATTN does for separate processes."""
    pytest.importorskip("timm")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "paired.py"
    spec = importlib.util.spec_from_file_location("paired", path)
    paired = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paired)
    sdpa, default = paired.build("timm-sdpa", "swin_t"), paired.build("timm", "swin_t")
    assert all(blk.attn.fused_attn for stage in sdpa.layers for blk in stage.blocks)
    assert not any(blk.attn.fused_attn for stage in default.layers for blk in stage.blocks)
