"""The video task: clip folders of video files and frame folders, mmaction-style frame sampling with looping of
short clips, unreadable clips skipped and counted, the moving-digits default data, multi-view averaging, recipes,
and `swinkit train --task video` -> `swinkit eval` -> `swinkit predict` on a run."""
import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from swinkit import train as train_mod
from swinkit.cli import main
from swinkit.config import VideoSwinConfig
from swinkit.models.video import VideoSwinTransformer
from swinkit.tasks import Env
from swinkit.tasks.video import (DIGITS_SAMPLES, DIRECTIONS, EvalViews, MovingDigits, TrainClip, VideoFolder,
                                 VideoTask, direction_unit, evaluate, frames_needed, moving_digit, sample_indices,
                                 view_log_probs)

av = pytest.importorskip("av", reason="PyAV writes the mp4 clips: pip install swinkit[video]")


def write_frames(folder: Path, clip: np.ndarray) -> Path:
    """(T, H, W, 3) uint8 -> folder/000.png ... (lossless)."""
    folder.mkdir(parents=True)
    for t, frame in enumerate(clip):
        Image.fromarray(frame).save(folder / f"{t:03d}.png")
    return folder


def write_video(path: Path, clip: np.ndarray, codec: str = "mpeg4") -> Path:
    """(T, H, W, 3) uint8 -> a video file (H, W even) at near-lossless quality."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        if codec == "mpeg4":
            stream.options = {"qscale": "1"}
        for frame in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def numbered(T: int, H: int = 16, W: int = 24) -> np.ndarray:
    """(T, H, W, 3) clip whose frame t is flat gray 20 t + 10: a decoded frame tells its index."""
    return np.broadcast_to((20 * np.arange(T, dtype=np.uint8) + 10)[:, None, None, None], (T, H, W, 3)).copy()


def frame_ids(video: torch.Tensor) -> list[int]:
    """(N, 3, H, W) uint8 frames of `numbered` clips -> their indices (robust to codec noise of a few levels)."""
    return [round((v.float().mean().item() - 10) / 20) for v in video]


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    """4 directions x (4 train, 2 val) moving-digit clips (8 frames of 32x32), half as mp4 files, half as frame
    folders."""
    root = tmp_path_factory.mktemp("moving")
    ds = MovingDigits("train", 48, frames=8)
    for d in ("N", "E", "S", "W"):
        for split, first, n in (("train", 0, 4), ("val", 4, 2)):
            for i in range(first, first + n):
                clip = ds.read(8 * i + DIRECTIONS.index(d), list(range(8))).permute(0, 2, 3, 1).numpy()  # (T, H, W, 3)
                if i % 2:
                    write_video(root / split / d / f"{i}.mp4", clip)
                else:
                    write_frames(root / split / d / f"{i}", clip)
    return root


def parse(*argv: str):
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser, "train", argv=list(argv))
    return train_mod.resolve_settings(parser.parse_args(list(argv)))


def tiny_model(num_classes: int = 8, patch=(2, 4, 4), window=(2, 4, 4)) -> VideoSwinTransformer:
    cfg = VideoSwinConfig.from_name("video_swin_t", num_classes=num_classes, embed_dim=16, depths=(1, 1),
                                    num_heads=(1, 2), patch_size=patch, window_size=window, drop_path_rate=0.0,
                                    head_drop_rate=0.0, img_size=(4, 32, 32))
    return VideoSwinTransformer(cfg).eval()


# ---- sampling


def test_sampling_is_mmactions_sample_frames_with_stride_offsets_and_looping():
    # testing: one clip centred, several spread evenly; every index a stride apart
    (one,) = sample_indices(100, 8, 2).tolist()
    span = 8 * 2
    assert one == list(range((100 - span + 1) // 2, (100 - span + 1) // 2 + span, 2))
    clips = sample_indices(100, 8, 2, clips=4)
    starts = clips[:, 0].tolist()
    assert clips.shape == (4, 8) and (clips.diff(dim=1) == 2).all()
    assert starts == sorted(starts) and max(np.diff(starts)) - min(np.diff(starts)) <= 1 and clips.max() < 100
    assert starts[0] > 0 and 100 - span - starts[-1] > 0  # each clip sits in the middle of its quarter
    # training: a uniformly random offset over every position that fits
    torch.manual_seed(0)
    offsets = {sample_indices(20, 8, 2, train=True)[0, 0].item() for _ in range(300)}
    assert offsets == set(range(20 - span + 1))
    # a clip shorter than the span loops (the official out_of_bound_opt='loop'); one of frames_needed does not
    assert sample_indices(5, 8, 1).tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    assert frames_needed(8, 2) == 15 and sample_indices(15, 8, 2).tolist() == [list(range(0, 15, 2))]


# ---- datasets


def test_frame_folders_and_video_files_give_the_sampled_frames(tmp_path):
    write_frames(tmp_path / "a" / "clip0", numbered(12))
    write_video(tmp_path / "a" / "clip1.mp4", numbered(12))
    write_video(tmp_path / "b" / "clip2.webm", numbered(10), codec="libvpx")  # no frame count in the header
    (tmp_path / "b" / "notes.txt").write_text("not a clip")
    ds = VideoFolder(tmp_path, frames=4, stride=2)
    assert ds.classes == ["a", "b"] and ds.targets == [0, 0, 1] and ds.lengths == [12, 12, 10]
    assert ds.skipped == [] and ds.looped() == []
    for i, n in enumerate(ds.lengths):
        video, target = ds[i]
        assert video.dtype == torch.uint8 and video.shape == (4, 3, 16, 24) and target == ds.targets[i]
        assert frame_ids(video) == sample_indices(n, 4, 2).flatten().tolist()
    ds.transform, ds.clips = EvalViews(8, 1.0, crops=3), 2
    views, _ = ds[1]
    assert views.shape == (2 * 3, 3, 4, 8, 8) and views.dtype == torch.float32  # (V, C, T, H, W)
    ds.transform, ds.clips, ds.train = TrainClip(8, (0.5, 1.0)), 1, True
    assert ds[0][0].shape == (3, 4, 8, 8)


def test_unreadable_clips_are_skipped_and_counted_and_short_ones_looped_and_counted(tmp_path):
    write_frames(tmp_path / "a" / "good", numbered(8))
    write_frames(tmp_path / "a" / "short", numbered(3))
    write_video(tmp_path / "b" / "good.mp4", numbered(8))
    (tmp_path / "b" / "garbage.mp4").write_bytes(b"\x00not a video" * 50)
    (tmp_path / "b" / "broken").mkdir()
    (tmp_path / "b" / "broken" / "000.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (tmp_path / "b" / "empty").mkdir()
    with pytest.warns(UserWarning) as caught:
        ds = VideoFolder(tmp_path, frames=4, stride=2)
    messages = "\n".join(str(w.message) for w in caught)
    assert sorted(Path(p).name for p, _ in ds.skipped) == ["broken", "empty", "garbage.mp4"]
    assert "skipped 3 unreadable clip(s)" in messages and "garbage.mp4" in messages
    assert [ds.samples[i][0].name for i in ds.looped()] == ["short"]
    assert "1 clip(s)" in messages and "fewer than the 7 frames" in messages and "short (3 frames)" in messages
    good, short = (ds.samples.index((tmp_path / "a" / n, 0)) for n in ("good", "short"))
    assert frame_ids(ds[short][0]) == [0, 2, 1, 0]  # 0, 2, 4, 6 looped over 3 frames
    assert short == good + 1
    # a clip that breaks after the scan is replaced by the next one in the loader, with a warning
    for f in (tmp_path / "a" / "good").iterdir():
        f.write_bytes(b"gone")
    with pytest.warns(UserWarning, match="could not read .*good.*using the next clip"):
        video, target = ds[good]
    assert target == ds.targets[short] and frame_ids(video) == [0, 2, 1, 0]  # the next clip: short


def test_class_folders_must_match_the_training_classes_and_hold_clips(tmp_path):
    write_frames(tmp_path / "val" / "c" / "x", numbered(4))
    with pytest.raises(ValueError, match=r"class folders that the training set does not have: \['c'\]"):
        VideoFolder(tmp_path / "val", 4, 1, classes=["a", "b"])
    (tmp_path / "val" / "d").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) \['d'\] .* hold no readable clips"):
        VideoFolder(tmp_path / "val", 4, 1)


# ---- the moving digits


def test_moving_digits_are_deterministic_balanced_split_by_digit_and_move_as_labelled():
    a, b = (MovingDigits("train", 80, frames=8, seed=0) for _ in range(2))
    val = MovingDigits("val", 80, frames=8, seed=0)
    other = MovingDigits("train", 80, frames=8, seed=1)
    clip = lambda ds, i: ds.read(i, list(range(8)))[:, 0].numpy().astype(float)  # noqa: E731 - (T, H, W)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(80))
    assert any(not np.array_equal(clip(a, i), clip(other, i)) for i in range(80))
    assert np.bincount(a.targets).tolist() == [10] * 8 and a.classes == list(DIRECTIONS)
    assert not set(a.digit_index) & set(val.digit_index)  # val digits are unseen in training
    assert len(set(a.digit_index[:8])) == 1  # one digit moves in all 8 directions: its shape tells nothing
    ys, xs = np.mgrid[:32, :32]
    for i in range(80):
        c = clip(a, i)
        mass = c.sum(axis=(1, 2))
        assert np.allclose(mass, a.digits[a.digit_index[i]].sum())  # whole digit in every frame
        centre = np.stack([(c * ys).sum((1, 2)) / mass, (c * xs).sum((1, 2)) / mass], 1)  # (T, 2)
        step = np.diff(centre, axis=0)
        assert np.allclose(step, step[0]) and np.allclose(np.sign(step[0]), direction_unit(DIRECTIONS[a.targets[i]]))
        assert round(np.abs(step[0]).max(), 6) in (2, 3)  # px per frame


def test_a_single_frame_does_not_tell_the_direction():
    digit = MovingDigits("val", 8, frames=8).digits[5]
    start = (10, 10)
    clips = {d: moving_digit(digit, start, tuple(2 * u for u in direction_unit(d)), 4, 32) for d in DIRECTIONS}
    assert all(np.array_equal(c[0], clips["N"][0]) for c in clips.values())  # same start, same first frame
    assert len({c[1].tobytes() for c in clips.values()}) == 8  # the second frame tells them apart
    east = moving_digit(digit, (4, 0), (0, 3), 8, 32)
    west = moving_digit(digit, (4, 21), (0, -3), 8, 32)
    assert np.array_equal(east[::-1], west)  # backwards, a clip is one of the opposite class: no frame order bias


# ---- metrics


def test_multi_view_scores_average_the_views_softmax():
    model = tiny_model(num_classes=6)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 3, 4, 32, 32)  # (B, V, C, T, H, W)
    with torch.no_grad():
        per_view = torch.stack([model(x[:, v]).softmax(-1) for v in range(3)], 1)  # (B, V, classes)
        log_p = view_log_probs(model, x)
        single = view_log_probs(model, x[:, 0])
    assert log_p.shape == (2, 6) and torch.allclose(log_p.exp(), per_view.mean(1), atol=1e-6)
    assert torch.allclose(single, model(x[:, 0]).log_softmax(-1), atol=1e-6)
    y = torch.tensor([0, 3])
    m = evaluate(model, [(x, y)], torch.device("cpu"), num_classes=6)
    expected = F.nll_loss(per_view.mean(1).log(), y).item()
    assert math.isclose(m["loss"], expected, rel_tol=1e-5) and m["num_videos"] == 2
    assert m["top1"] == 100 * (per_view.mean(1).argmax(1) == y).float().mean().item()
    assert m["top5"] == 100 * (per_view.mean(1).topk(5).indices == y[:, None]).any(1).float().mean().item()
    assert m["confusion"].sum() == 2
    assert "top5" not in evaluate(tiny_model(num_classes=4), [(x, y)], torch.device("cpu"))  # < 5 classes


def test_three_crops_run_along_the_long_side():
    video = torch.arange(48, dtype=torch.uint8).repeat(2, 3, 16, 1)  # (T, 3, 16, 48): column index as value
    from torchvision import tv_tensors

    views = EvalViews(16, 1.0, crops=3, mean=(0, 0, 0), std=(1, 1, 1))(tv_tensors.Video(video))
    assert views.shape == (3, 2, 3, 16, 16)
    firsts = [round(255 * v[0, 0, 0, 0].item()) for v in views]
    assert firsts == [0, 16, 32]  # left, centre, right
    portrait = EvalViews(16, 1.0, crops=3, mean=(0, 0, 0), std=(1, 1, 1))(tv_tensors.Video(video.transpose(2, 3)))
    assert [round(255 * v[0, 0, 0, 0].item()) for v in portrait] == [0, 16, 32]  # top, centre, bottom


# ---- the task


def test_recipes_digits_by_default_the_official_one_with_data_and_the_static_ablation(digits_root):
    s = parse("--task", "video")
    assert (s.run.recipe, s.task.data, s.task.frames, s.task.frame_stride, s.task.hflip) == ("digits", None, 8, 1, 0)
    static = parse("--task", "video", "--recipe", "digits-static")
    task = VideoTask(static, Env(torch.device("cpu")))
    train, val = task.build_datasets()
    assert isinstance(train, MovingDigits) and (len(train), len(val)) == (DIGITS_SAMPLES["train"],
                                                                          DIGITS_SAMPLES["val"])
    model = task.build_model()
    assert model.cfg.patch == (1, 4, 4) and set(model.cfg.window_size) == {(1, 4, 4)}  # no token sees 2 frames
    assert model.num_classes == 8 and task.checkpoint_meta()["class_names"] == list(DIRECTIONS)
    small = parse("--task", "video", "--data", str(digits_root))  # small clips from scratch: a model at their size
    assert small.run.recipe == "small" and small.run.recipe_note.startswith("recipe small: ")
    assert (small.task.img_size, small.task.frames, small.task.embed_dim) == (32, 8, 32)
    official = parse("--task", "video", "--data", str(digits_root), "--recipe", "default")
    assert official.run.recipe == "default" and official.run.recipe_note is None
    t, h, _ = VideoSwinConfig.from_name("video_swin_t").clip_size
    assert (official.task.frames, official.task.img_size, official.task.frame_stride) == (t, h, 2)
    assert (official.optim.lr, official.optim.weight_decay, official.schedule.epochs,
            official.schedule.warmup_epochs) == (1e-3, 0.02, 30, 2.5)
    with pytest.raises(ValueError, match="unknown video model 'swin_t'"):
        parse("--task", "video", "--model", "swin_t")


def test_pretrained_2d_weights_are_inflated_through_the_factory(tmp_path, digits_root):
    factory = pytest.importorskip("swinkit.factory")
    if not hasattr(factory, "create_video_model"):
        pytest.skip("swinkit.factory.create_video_model has not landed yet")
    from swinkit import SwinConfig, SwinTransformer, save_model

    image = SwinTransformer(SwinConfig(embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4, num_classes=10))
    save_model(image, tmp_path / "image.safetensors")
    flags = ["--task", "video", "--data", str(digits_root), "--pretrained", str(tmp_path / "image.safetensors"),
             "--embed-dim", "16", "--depths", "1", "1", "--num-heads", "1", "2", "--window-size", "2", "4", "4",
             "--frames", "4", "--img-size", "32"]
    patch_2d = image.state_dict()["patch_embed.proj.weight"]  # (C, 3, 4, 4)
    for inflate in ("average", "center"):
        task = VideoTask(parse(*flags, "--inflate", inflate), Env(torch.device("cpu")))
        task.build_datasets()
        with pytest.warns(UserWarning, match="inflated"):
            video = task.build_model()
        assert isinstance(video, VideoSwinTransformer) and video.num_classes == 4  # the data's classes
        key = "layers.0.blocks.0.mlp.fc1.weight"
        assert torch.equal(video.state_dict()[key], image.state_dict()[key])
        patch_3d = video.state_dict()["patch_embed.proj.weight"]  # (C, 3, 2, 4, 4)
        assert torch.allclose(patch_3d.sum(2), patch_2d)  # a still clip gives the image model's embedding
        if inflate == "average":
            assert torch.allclose(patch_3d[:, :, 0], patch_3d[:, :, 1])
        else:
            assert not patch_3d[:, :, 0].any()


def test_train_eval_and_predict_a_video_run(tmp_path, digits_root, capsys):
    run = tmp_path / "run"
    tiny = ["--embed-dim", "16", "--depths", "1", "1", "--num-heads", "1", "2", "--frames", "4", "--frame-stride",
            "2", "--img-size", "32", "--patch-size", "2", "4", "4", "--window-size", "2", "4", "4"]
    assert main(["train", "--task", "video", "--data", str(digits_root), "--recipe", "digits", "--epochs", "1",
                 "--batch-size", "4", "--out", str(run), "--test-clips", "2", "--test-crops", "3", *tiny]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "video" and config["class_names"] == ["E", "N", "S", "W"]
    assert {k: config["data"][k] for k in ("frames", "frame_stride", "img_size", "test_clips", "test_crops")} == \
        {"frames": 4, "frame_stride": 2, "img_size": 32, "test_clips": 2, "test_crops": 3}
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["skipped_clips"], summary["looped_clips"], summary["epochs"]) == (0, 0, 1)
    capsys.readouterr()

    assert main(["eval", "--checkpoint", str(run), "--data", str(digits_root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["num_videos"], result["num_classes"], result["views"]) == (8, 4, "2 clip(s) x 3 crop(s)")
    assert result["top5"] is None and (run / "confusion_matrix.png").is_file()

    clips = sorted(p for p in (digits_root / "val").glob("*/*"))
    assert main(["predict", "--checkpoint", str(run), *map(str, clips), "--json", "--topk", "4"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["clip"]) for r in lines] == clips and all(r["views"] == 6 and r["frames"] == 8 for r in lines)
    for r in lines:
        probs = [p["prob"] for p in r["predictions"]]
        assert probs == sorted(probs, reverse=True) and math.isclose(sum(probs), 1.0, rel_tol=1e-4)
    right = [r["predictions"][0]["class"] == Path(r["clip"]).parent.name for r in lines]
    assert math.isclose(result["top1"], 100 * sum(right) / len(right))  # eval and predict score the same views

    assert main(["predict", "--checkpoint", str(run), str(tmp_path / "missing.mp4"), str(clips[0])]) == 1
    out = capsys.readouterr()
    assert "cannot read" in out.err and "missing.mp4" in out.err and str(clips[0]) in out.out
