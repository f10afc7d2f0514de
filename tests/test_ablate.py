"""`swinkit ablate` and `swinkit search` (tools/ablate.py, tools/search.py): grid parsing and its errors, width
matching to the reference's MACs, the noise rule, successive halving's schedule and the Pareto front on hand-made
numbers, and both commands end to end on a generated 3-class folder with runs of one epoch (resumed: a second call
trains nothing and writes the same table)."""
import csv
import importlib.util
import json
import statistics

import pytest

from conftest import color_folder
from swinkit.cli import main
from swinkit.tools import ablate as A
from swinkit.tools import search as S

TINY = ["--set", "embed_dim=16", "--set", "batch_size=8", "--set", "threads=1"]
pytestmark = pytest.mark.usefixtures("keep_threads")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 8 train / 4 val noisy colour squares, 16x16 (trained at the small recipe's 32x32)."""
    return color_folder(tmp_path_factory.mktemp("colors"), 8, 4)


def tiny_setup(**set_model) -> A.Setup:
    """The small recipe's model, narrowed, counted for 10 classes at 32x32 (no data read)."""
    return A.Setup(data="", recipe="small", set_model={"embed_dim": 32, **set_model}, set_train={}, num_classes=10,
                   train_images=0, size=32)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- the grid


def test_vary_values_are_parsed_to_the_fields_types():
    vary = A.parse_vary(["window_size=4,8,4-8", "shift=true,false", "mixer=window,window-global",
                         "pos_embed=none,absolute+relative", "depths=2-2", "layer_scale=1e-5,none"])
    assert vary == [("window_size", [4, 8, (4, 8)]), ("shift", [True, False]),
                    ("mixer", ["window", ("window", "global")]), ("pos_embed", ["none", "absolute+relative"]),
                    ("depths", [(2, 2)]), ("layer_scale", [1e-5, None])]
    points = A.grid(A.parse_vary(["window_size=4,8", "shift=true,false"]))
    assert [A.config_id(p) for p in points] == ["window_size=4,shift=true", "window_size=4,shift=false",
                                                "window_size=8,shift=true", "window_size=8,shift=false"]
    assert A.grid([]) == [{}] and A.config_id({}) == "base"
    assert A.config_id({"window_size": (4, 8), "mixer": ("window", "global")}) == "window_size=4-8,mixer=window-global"


@pytest.mark.parametrize("texts, message", [
    (["shift"], "--vary 'shift': expected KEY=V1,V2,..., e.g. --vary window_size=4,7"),
    (["shift=yes"], "shift=yes: expected true or false"),
    (["window_size=a"], "window_size=a: expected an integer, or one per stage joined by '-'"),
    (["window_size=4,,8"], "window_size=: an empty entry; join one entry per stage with '-', e.g. window_size=4-4-8-8"),
    (["mlp_ratio=wide"], "mlp_ratio=wide: expected a number"),
    (["shift=true", "shift=false"], "--vary shift is given twice: list all its values in one --vary shift=V1,V2,..."),
    (["window_size=4,4"], "--vary window_size: a value is listed twice (4,4)"),
])
def test_bad_vary_is_one_exact_error(texts, message):
    with pytest.raises(A.AblateError) as e:
        A.parse_vary(texts)
    assert str(e.value) == message


def test_an_unknown_key_lists_the_valid_fields():
    with pytest.raises(A.AblateError) as e:
        A.parse_vary(["windowsize=4,8"], "--space")
    assert str(e.value).startswith("--space windowsize: not a SwinConfig field; expected one of ")
    valid = str(e.value).split("expected one of ")[1].split(", ")
    assert {"window_size", "shift", "pos_embed", "mixer", "embed_dim"} <= set(valid) and "num_classes" not in valid


def test_set_splits_model_fields_from_training_settings():
    model, train = A.parse_set(["shift=false", "window_size=4-8", "batch_size=16", "ema=true", "scale=0.7 1.0"])
    assert model == {"shift": False, "window_size": (4, 8)}
    assert train == {"batch_size": "16", "ema": "true", "scale": "0.7 1.0"}
    assert A.setting_flags(train) == ["--batch-size", "16", "--ema", "--scale", "0.7", "1.0"]
    assert A.setting_flags({"verify_images": "false"}) == ["--no-verify-images"]
    for text, message in [
        ("data=x", "--set data: set by the command itself (--data, --out, --seeds, --recipe, --baseline)"),
        ("ema=maybe", "--set ema=maybe: expected true or false"),
        ("colour=red", "--set colour: neither a SwinConfig field nor a training setting (`swinkit train --help` "
                       "lists the settings: --batch-size is batch_size)"),
        ("lr", "--set 'lr': expected KEY=VALUE, e.g. --set batch_size=64 or --set shift=false")]:
        with pytest.raises(A.AblateError) as e:
            A.parse_set([text])
        assert str(e.value) == message


@pytest.mark.parametrize("argv, message", [
    (["--vary", "windowsize=4"], "error: --vary windowsize: not a SwinConfig field"),
    (["--vary", "embed_dim=16,32"], "error: --vary embed_dim: width matching adjusts embed_dim itself; add --no-match "
                                    "to vary it"),
    (["--set", "epochs=3", "--budget-minutes", "1"], "error: --set epochs and --budget-minutes both choose the "
                                                     "epochs: give one of them"),
    (["--baseline", "convnext_atto"], "error: --baseline convnext_atto: expected timm:NAME, e.g. --baseline "
                                      "timm:convnext_atto"),
    (["--seeds", "0"], "error: --seeds must be >= 1, got 0"),
])
def test_the_command_refuses_bad_settings_before_any_work(folder, tmp_path, capsys, argv, message):
    assert main(["ablate", "--data", str(folder), "--out", str(tmp_path / "out"), *argv]) == 1
    assert capsys.readouterr().err.startswith(message)
    assert not (tmp_path / "out").exists()


# ---- width matching


def test_width_step_keeps_every_stage_divisible_by_its_heads():
    assert A.width_step((2, 4)) == 2 and A.width_step((3, 6, 12, 24)) == 3 and A.width_step((4, 4)) == 4
    for heads in [(2, 4), (3, 6, 12, 24), (4, 4), (6, 5)]:
        step = A.width_step(heads)
        assert all(step * 2**i % h == 0 for i, h in enumerate(heads))


def test_flops_are_matched_within_ten_percent_by_width():
    """Window 8 on the 8x8 tokens of a 32x32 image is global attention: 15% more MACs than window 4 at the same
    width; matching narrows it to within 10%, in steps that keep the heads whole, and says what it did."""
    s = tiny_setup()
    plain = A.plan_configs([{"window_size": 4}, {"window_size": 8}], s, [], None, 0.10)
    assert plain[1].macs / plain[0].macs > 1.10
    ref, wide = A.plan_configs([{"window_size": 4}, {"window_size": 8}], s, [], "window_size=4", 0.10)
    assert ref.match == {"embed_dim": 32, "base_embed_dim": 32, "ratio": 1.0, "matched": True, "note": "reference"}
    assert wide.match["matched"] and abs(wide.macs / ref.macs - 1) <= 0.10
    assert wide.match["ratio"] == pytest.approx(wide.macs / ref.macs)
    assert wide.match["embed_dim"] < 32 and wide.match["embed_dim"] % A.width_step((2, 4)) == 0
    assert wide.kwargs == {"embed_dim": wide.match["embed_dim"], "window_size": 8}  # what the run is given
    assert (wide.params, wide.macs) == A.count(A.Config("x", "", wide.kwargs, size=32), s)
    # no other width of that step is closer
    step = A.width_step((2, 4))
    for d in (wide.match["embed_dim"] - step, wide.match["embed_dim"] + step):
        other = A.count(A.Config("x", "", {"embed_dim": d, "window_size": 8}, size=32), s)[1]
        assert abs(other / ref.macs - 1) >= abs(wide.macs / ref.macs - 1)
    # shift changes no MACs: the width stays
    on, off = A.plan_configs([{"shift": True}, {"shift": False}], s, [], "shift=true", 0.10)
    assert off.match["embed_dim"] == 32 and off.macs == on.macs
    # a tolerance no width reaches is said, not hidden
    _, missed = A.plan_configs([{"window_size": 4}, {"window_size": 8}], s, [], "window_size=4", 0.001)
    assert not missed.match["matched"]
    assert missed.match["note"].startswith(f"cannot be matched within 0%: the closest width, C "
                                           f"{missed.match['embed_dim']}, gives ")
    with pytest.raises(A.AblateError, match=r"--match-flops shift=maybe: no such configuration; expected one of "
                                            r"window_size=4, window_size=8"):
        A.plan_configs([{"window_size": 4}, {"window_size": 8}], s, [], "shift=maybe", 0.10)


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm (the dev extra) is not installed")
def test_a_timm_baseline_is_counted_and_left_at_its_width():
    s = tiny_setup()
    ref, base = A.plan_configs([{"window_size": 4}], s, ["timm:convnext_atto"], "window_size=4", 0.10)
    assert base.id == "timm-convnext_atto" and base.external and base.kwargs == {}
    import timm

    assert base.params == sum(p.numel() for p in timm.create_model("convnext_atto", num_classes=10).parameters())
    assert base.match == {"note": "external baseline: not adjusted", "ratio": base.macs / ref.macs}
    assert A.train_argv(base, s)[-2:] == ["--model", "timm:convnext_atto"]
    with pytest.raises(ValueError, match=r"--model timm:convnext_atto is timm's architecture; remove "
                                         r"\['--embed-dim'\]"):
        A.settings_of(["--data", "x", "--recipe", "small", "--model", "timm:convnext_atto", "--embed-dim", "8"])


# ---- noise


def test_the_noise_rule_on_hand_made_numbers():
    # means 71 and 72, s = 1 on both sides, 3 seeds: 2 * sqrt(1/3 + 1/3) = 1.63 > 1
    assert A.within_noise([70, 71, 72], [71, 72, 73]) is True
    # means 70.5 and 75.5, s = 0.5: 2 * sqrt(0.25/3 * 2) = 0.82 < 5
    assert A.within_noise([70, 70.5, 71], [75, 75.5, 76]) is False
    assert A.within_noise([70], [71, 72]) is None  # one seed: no estimate of the noise
    assert A.within_noise([50, 50], [50, 50]) is True and A.within_noise([50, 50], [51, 51]) is False
    values = {"a": [70, 71, 72], "b": [71, 72, 73], "c": [60, 60.5, 61], "d": [80], "e": []}
    assert A.noise_notes({k: values[k] for k in "abce"}) == {
        "a": "within noise of b", "b": "best", "c": "-11.50 vs b", "e": ""}
    assert A.noise_notes(values)["b"] == "one seed: no noise estimate"  # d (one seed) is best
    assert A.noise_pairs(values) == [("a", "b")]
    assert A.mean_std([70, 71, 72]) == (71, 1.0) and A.mean_std([70]) == (70, None) and A.mean_std([]) == (None, None)


# ---- successive halving and the Pareto front


def test_halving_schedule_spends_the_budget():
    assert S.halving(5, 2) == [5, 2] and S.halving(2, 2) == [2] and S.halving(1, 3) == [1]
    assert S.halving(9, 3) == [9, 3] and S.halving(3, 2) == [3]
    for n, eta in [(5, 2), (9, 3), (16, 2), (1, 2)]:
        rounds = S.halving(n, eta)
        minutes = S.round_minutes(12.0, rounds, eta)
        assert sum(k * m for k, m in zip(rounds, minutes)) == pytest.approx(12.0)
        assert all(b == pytest.approx(a * eta) for a, b in zip(minutes, minutes[1:]))


def test_candidates_per_stage_and_sampled():
    space = [("window_size", [4, 8])]
    assert S.candidates(space, 2, False, 32, 0) == [{"window_size": 4}, {"window_size": 8}]
    every = S.candidates(space, 2, True, 32, 0)
    assert every == [{"window_size": (4, 4)}, {"window_size": (4, 8)}, {"window_size": (8, 4)},
                     {"window_size": (8, 8)}]
    sample = S.candidates(space, 2, True, 2, 0)
    assert len(sample) == 2 and sample == [c for c in every if c in sample] == S.candidates(space, 2, True, 2, 0)


def test_pareto_front_on_hand_made_points():
    points = {"a": (70.0, 1.0), "b": (75.0, 2.0), "c": (74.0, 3.0), "d": (75.0, 2.0), "e": (80.0, 5.0),
              "f": (69.0, 1.0)}
    # c: b is better and cheaper; f: a is as cheap and better; b and d tie: neither dominates the other
    assert S.pareto_front(points) == {"a", "b", "d", "e"}


# ---- one run: fresh, resumed, skipped, failed, interrupted


FAKE_TRAIN = """import json, pathlib, sys
run = pathlib.Path(sys.argv[sys.argv.index("--resume") + 1] if "--resume" in sys.argv else sys.argv[-1])
code = {"fail": 1, "stop": 130}.get(run.name, 0)
if code == 1:
    print("error: out of luck")
if code == 0:
    (run / "summary.json").write_text(json.dumps({"status": "completed", "val_top1": 50.0}))
sys.exit(code)
"""


def test_a_run_starts_resumes_or_is_skipped_and_says_why_it_failed(tmp_path, monkeypatch):
    """run_training's decisions, with `swinkit train` replaced by a script that writes what a run would."""
    commands, popen = [], A.subprocess.Popen

    def fake_train(cmd, **kwargs):
        commands.append(cmd)
        return popen([A.sys.executable, "-c", FAKE_TRAIN, *cmd[4:]], **kwargs)

    monkeypatch.setattr(A.subprocess, "Popen", fake_train)
    argv = ["--data", "D", "--recipe", "small", "--seed", "0"]
    for name in ("fresh", "ok", "fail", "stop"):
        (tmp_path / name).mkdir()
    fresh = A.run_training(tmp_path / "fresh", argv)
    assert commands[-1][1:] == ["-m", "swinkit", "train", *argv, "--out", str(tmp_path / "fresh")]
    assert fresh["status"] == "trained" and fresh["summary"]["val_top1"] == 50.0 and fresh["max_rss_mb"] > 0
    assert json.loads((tmp_path / "fresh" / "ablate.json").read_text()) == {"argv": argv}
    assert A.run_training(tmp_path / "fresh", argv)["status"] == "skipped" and len(commands) == 1
    (tmp_path / "ok" / "last.pt").write_bytes(b"")  # killed or interrupted: it resumes from its checkpoint
    (tmp_path / "ok" / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    resumed = A.run_training(tmp_path / "ok", argv)
    assert commands[-1][1:] == ["-m", "swinkit", "train", "--resume", str(tmp_path / "ok")]
    assert resumed["status"] == "resumed" and resumed["summary"]["status"] == "completed"
    failed = A.run_training(tmp_path / "fail", argv)
    assert failed["status"] == "failed" and failed["error"] == "error: out of luck" and failed["summary"] == {}
    with pytest.raises(KeyboardInterrupt):  # the run saved its state and exited 130: the command stops
        A.run_training(tmp_path / "stop", argv)


# ---- end to end


def test_ablate_trains_every_configuration_and_seed_then_resumes_without_training(folder, tmp_path, capsys):
    out = tmp_path / "ablation"
    argv = ["ablate", "--data", str(folder), "--vary", "window_size=4,8", "--seeds", "2", "--budget-minutes", "1e-4",
            "--robust-images", "6", "--out", str(out), *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    rows = read_csv(out / "ablation.csv")
    assert [r["config"] for r in rows] == ["window_size=4", "window_size=8"]
    for r in rows:
        runs = [json.loads((out / "runs" / f"{r['config']}-seed{k}" / "summary.json").read_text()) for k in (0, 1)]
        assert all(s["status"] == "completed" and s["epochs"] == 1 for s in runs)  # 1e-4 minutes: one epoch
        top1 = [s["val_top1"] for s in runs]
        assert r["seeds"] == "2" and r["top1_seeds"] == ";".join(f"{v:.2f}" for v in top1)
        assert float(r["top1_mean"]) == pytest.approx(statistics.fmean(top1), abs=1e-6)
        assert float(r["top1_std"]) == pytest.approx(statistics.stdev(top1), abs=1e-6)
        assert float(r["params_m"]) * 1e6 == pytest.approx(runs[0]["params"], abs=1)  # counted = trained
        config = json.loads((out / "runs" / f"{r['config']}-seed1" / "config.json").read_text())
        assert config["args"]["seed"] == 1 and config["model"]["embed_dim"] == int(r["embed_dim"])
        assert config["model"]["window_size"] == [[int(r["config"][-1])] * 2] * 2
        assert float(r["img_per_s"]) > 0 and float(r["peak_mem_mb"]) > 0 and r["peak_mem"] == "process RSS"
        if importlib.util.find_spec("swinkit.metrics.robustness"):
            assert 0 <= float(r["robust_mean"]) <= 100 and 0 <= float(r["robust_cyclic_mean"]) <= 100
    assert rows[0]["vs_best"] in ("best", "within noise of window_size=8") or "vs window_size=8" in rows[0]["vs_best"]
    assert rows[0]["width_note"] == "reference" and rows[0]["embed_dim"] == "16"
    assert int(rows[1]["embed_dim"]) < 16 and abs(float(rows[1]["gmacs_vs_ref"]) - 1) <= 0.10
    assert printed.count(": trained: top-1") == 4
    md = (out / "ablation.md").read_text()
    assert md.startswith("# Ablation\n\n```\nswinkit ablate --data " + str(folder))
    assert "--vary window_size=4,8 --seeds 2 --budget-minutes 0.0001" in md
    assert f"| window_size=8 | {float(rows[1]['top1_mean']):.2f} ± " in md and "| window_size=4 |" in md
    assert "within noise* when their mean top-1 differ by less than 2 pooled standard errors" in md
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    last = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/last.pt")}
    before = (out / "ablation.csv").read_text()

    assert main(argv) == 0  # everything is done: nothing is trained again, the table is the same
    assert capsys.readouterr().out.count(": skipped: top-1") == 4
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/last.pt")} == last and len(last) == 4
    assert (out / "ablation.csv").read_text() == before

    spec = out / "runs" / "window_size=4-seed0" / "ablate.json"  # a run of other settings is never reused
    spec.write_text(json.dumps({"argv": ["--data", "elsewhere"]}))
    assert main(argv) == 1
    assert capsys.readouterr().err.startswith(f"error: {spec.parent} holds a run of other settings (see its "
                                              "ablate.json): move it away, or use another --out for these settings")


def test_search_leaves_out_what_is_over_the_flops_budget_and_writes_the_front(folder, tmp_path, capsys):
    s = A.Setup(str(folder), "small", {"embed_dim": 16}, {}, 3, 24, 32)
    macs = {w: A.count(A.Config("x", "", {"embed_dim": 16, "window_size": w}, size=32), s)[1] for w in (2, 4, 8)}
    assert macs[2] < macs[4] < macs[8]
    budget = float(f"{(macs[4] + macs[8]) / 2e9:.9f}")
    out = tmp_path / "search"
    assert main(["search", "--data", str(folder), "--space", "window_size=2,4,8", "--flops-budget", str(budget),
                 "--budget-minutes", "1e-4", "--out", str(out), *TINY]) == 0
    rows = read_csv(out / "search.csv")
    excluded = [r for r in rows if r["status"].startswith("excluded")]
    assert [r["config"] for r in excluded] == ["window_size=8"] and excluded[0]["top1"] == ""
    assert excluded[0]["status"] == f"excluded: {macs[8] / 1e9:.4g} GMACs > --flops-budget {budget:g}"
    first = {r["config"]: r for r in rows if r["rung"] == "0"}
    assert sorted(first) == ["window_size=2", "window_size=4"]  # two left: one round, the best of the two wins
    assert sorted(r["status"] for r in first.values()) == ["dropped", "winner"]
    assert all(float(r["latency_ms"]) > 0 and r["window_size"] in ("2-2", "4-4") for r in first.values())
    assert float(first["window_size=4"]["gmacs"]) == pytest.approx(macs[4] / 1e9, rel=1e-5)
    pareto = {r["config"]: r["front"] for r in read_csv(out / "pareto.csv")}
    fronts = {cost: S.pareto_front({k: (float(r["top1"]), float(r[cost])) for k, r in first.items()})
              for cost in ("gmacs", "latency_ms")}
    assert set(pareto) == fronts["gmacs"] | fronts["latency_ms"]
    assert all(("gmacs" in f.split("+")) == (k in fronts["gmacs"]) and ("latency" in f.split("+")) ==
               (k in fronts["latency_ms"]) for k, f in pareto.items())
    assert "window_size=2" in fronts["gmacs"]  # the cheapest always is on the MACs front
    assert (out / "search.png").read_bytes()[:4] == b"\x89PNG"
    assert "winner: window_size=" in capsys.readouterr().out


def test_per_stage_windows_are_one_square_window_per_stage():
    """window_size=2-4 on a 2-stage model means window 2 in stage 0 and 4 in stage 1, not one 2x4 window."""
    from swinkit.config import SwinConfig

    c = A.Config("window_size=2-4", "", {"window_size": A.parse_value("window_size", "2-4")})
    assert c.kwargs == {"window_size": [[2, 2], [4, 4]]}
    cfg = SwinConfig(depths=(2, 2), num_heads=(2, 4), embed_dim=32, **c.kwargs)
    assert cfg.window_size == ((2, 2), (4, 4))
