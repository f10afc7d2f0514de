"""GroundingDINO on swinkit's Swin (models/grounding.py, io/formats/grounding.py, tasks/grounding.py): transformers'
own GroundingDinoForObjectDetection with random weights, saved as the IDEA-Research directories are (save_pretrained,
tokenizer and processor beside it), read by load_model with no hints and equal to it; converted both ways; a wrong key
caught; `swinkit predict --prompt` on it; the variants' parameters. Everything is built here, tiny: no downloads."""
import contextlib
import copy
import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

import swinkit  # noqa: E402
from swinkit.cli import main  # noqa: E402
from swinkit.families import GROUNDING, family_of_model, family_of_state_dict  # noqa: E402
from swinkit.interop.hf import SwinkitBackbone  # noqa: E402
from swinkit.io.files import CheckpointError, read_weights, write_safetensors  # noqa: E402

from conftest import randomize_  # noqa: E402
from test_convert import PARITY_FLOAT64, parity_error  # noqa: E402

PROMPTS = ["a person . a bicycle .", "a red cat ."]
WORDS = ["a", "person", "bicycle", "red", "cat", "dog"]
# 75 x 101: patch padding, stage maps 19x26, 10x13, 5x7, 3x4 (the last smaller than the window), as test_hf_backbone
PADS = (75, 101)


def write_vocab(path) -> None:
    """A BERT WordPiece vocabulary with bert-base-uncased's ids for [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK]
    103 and "." 1012 (fillers between): GroundingDINO splits a prompt into phrases at those ids (its SPECIAL_TOKENS),
    so a tiny vocabulary must keep them to behave as the real one."""
    vocab = ["[PAD]", *[f"[unused{i}]" for i in range(99)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 99 + 1012 - len(vocab))] + [".", *WORDS]
    path.write_text("\n".join(vocab) + "\n")


def tiny_config():
    bb = transformers.SwinConfig(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=4,
                                 out_indices=[2, 3, 4])
    text = transformers.BertConfig(vocab_size=1024, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=64)
    return transformers.GroundingDinoConfig(
        backbone_config=bb, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=20, encoder_n_points=2,
        decoder_n_points=2, max_text_len=32)


def save_processor(folder) -> None:
    """A GroundingDinoProcessor (BERT tokenizer of write_vocab, images resized to 64..96 px) saved in `folder`."""
    write_vocab(folder / "vocab.txt")
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"))
    images = transformers.GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    transformers.GroundingDinoProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """(a directory as IDEA-Research/grounding-dino-* is laid out, transformers' model it holds). randomize_ gives
    every LayerNorm a gain around 0, which shrinks each sublayer's output 20-fold (logits of scale 0.03 that the image
    moves by 1%): the gains get 1 added, as trained models keep them near 1."""
    torch.manual_seed(0)  # a module fixture runs before the autouse seed
    model = randomize_(transformers.GroundingDinoForObjectDetection(tiny_config()), std=0.05).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(1)
    path = tmp_path_factory.mktemp("gdino") / "grounding-dino-tiny"
    model.save_pretrained(path)
    save_processor(path)
    return path, model


def inputs(path, size=PADS) -> dict:
    """Two images of `size`, the second valid only in its top-left 60 x 90 (as the processor pads a smaller image),
    and PROMPTS tokenised with padding (the second shorter)."""
    tokenizer = transformers.GroundingDinoProcessor.from_pretrained(path).tokenizer
    pixel_mask = torch.ones(2, *size, dtype=torch.long)
    pixel_mask[1, 60:], pixel_mask[1, :, 90:] = 0, 0
    return dict(pixel_values=torch.randn(2, 3, *size), pixel_mask=pixel_mask,
                **tokenizer(PROMPTS, padding=True, return_tensors="pt"))


@contextlib.contextmanager
def float64():
    """GroundingDINO pads its logits with a tensor of the default dtype: float64 throughout needs that default."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)


def outputs(model, x: dict, dtype=torch.float32):
    model = copy.deepcopy(model).to(dtype) if dtype != torch.float32 else model
    x = {k: v.to(dtype) if v.is_floating_point() else v for k, v in x.items()}
    with torch.no_grad(), (float64() if dtype == torch.float64 else contextlib.nullcontext()):
        return model(**x)


def logits_error(out, ref) -> float:
    """parity_error of the logits where they are finite (a query's logits past its prompt's tokens are -inf)."""
    finite = torch.isfinite(ref.logits)
    assert torch.equal(finite, torch.isfinite(out.logits))
    return parity_error(out.logits[finite], ref.logits[finite])


# ----------------------------------------------------------------------------------------------------------
# reading transformers' directory


def test_load_model_equals_transformers(hf_dir):
    path, theirs = hf_dir
    ours = swinkit.load_model(path)  # no hints: config.json + model.safetensors as save_pretrained writes them
    assert isinstance(ours, transformers.GroundingDinoForObjectDetection) and not ours.training
    assert isinstance(ours.model.backbone.conv_encoder.model, SwinkitBackbone)
    assert family_of_model(ours) is GROUNDING
    x = inputs(path)
    ref, out = outputs(theirs, x), outputs(ours, x)
    finite = torch.isfinite(ref.logits)
    # [CLS] a person . a bicycle . [SEP] and [CLS] a red cat . [SEP]: the tokens of each prompt, padding left out
    assert finite.sum(-1).tolist() == [[8] * 20, [6] * 20]
    # not a degenerate comparison: logits of scale ~10 that the image moves, boxes spread over the image
    other = outputs(theirs, {**x, "pixel_values": torch.randn_like(x["pixel_values"])})
    assert ref.logits[finite].std() > 1 and logits_error(other, ref) > 0.01 and ref.pred_boxes.std() > 0.1
    # Two-stage query selection takes the top 20 of 181 encoder proposals by score: rounding can reorder them only
    # where two scores lie within it. The closest of the top 21 lie 8e-4 of the scale apart (asserted > 1e-4),
    # float32's rounding is about 1e-6 (below): both models select the same queries in the same order.
    scores = ref.enc_outputs_class.max(-1).values
    for s in scores:
        top = s[torch.isfinite(s)].sort(descending=True).values[:21]
        assert (top[:-1] - top[1:]).min() > 1e-4 * top.abs().max()
    # In float32 rounding alone parts the two backbones: their longest sums (the last stage's MLP, n = 512 terms)
    # round by about sqrt(n) u = 1e-6 of their scale (u = 2^-24); ~30 sublayers deep (backbone, encoder, decoder),
    # 1e-4 of the scale holds whatever kernels a CPU picks (measured: 0 on an AMD EPYC, whose kernels give both the
    # same bits). Boxes are sigmoids: scale 1.
    assert logits_error(out, ref) <= 1e-4
    assert (out.pred_boxes - ref.pred_boxes).abs().max() <= 1e-4
    # In float64 the two are the same function: PARITY_FLOAT64 (test_convert), measured <= 5e-16, 1e8 below the float32
    # bound; a wiring error that random weights hide in float32's rounding shows here (the swapped q and k of
    # test_a_wrong_backbone_key_fails_parity_or_loading need neither: they move the logits by 4% of their scale)
    ref64, out64 = outputs(theirs, x, torch.float64), outputs(ours, x, torch.float64)
    assert logits_error(out64, ref64) <= PARITY_FLOAT64
    assert (out64.pred_boxes - ref64.pred_boxes).abs().max() <= PARITY_FLOAT64


def test_transformers_4_layout_loads(hf_dir, tmp_path):
    """The hub's files (saved by transformers 4) store the decoder's tied box MLPs and no final LayerNorm of the
    Swin; transformers 5 saves the reverse."""
    path, theirs = hf_dir
    sd, _ = read_weights(path / "model.safetensors")
    sd = {k: v for k, v in sd.items() if ".swin.layernorm." not in k}
    tied = ("bbox_embed.", "model.decoder.bbox_embed.")
    sd.update({k: v for k, v in theirs.state_dict().items() if k.startswith(tied)})
    shutil.copytree(path, tmp_path / "v4")
    write_safetensors(sd, tmp_path / "v4" / "model.safetensors")
    x = inputs(path)
    assert logits_error(outputs(swinkit.load_model(tmp_path / "v4"), x), outputs(theirs, x)) <= 1e-4


def test_a_wrong_backbone_key_fails_parity_or_loading(hf_dir, tmp_path):
    path, theirs = hf_dir
    sd, _ = read_weights(path / "model.safetensors")
    block = "model.backbone.conv_encoder.model.encoder.layers.1.blocks.0.attention.self."
    swapped = {**sd, block + "query.weight": sd[block + "key.weight"], block + "key.weight": sd[block + "query.weight"]}
    shutil.copytree(path, tmp_path / "swapped")
    write_safetensors(swapped, tmp_path / "swapped" / "model.safetensors")
    x = inputs(path)
    assert logits_error(outputs(swinkit.load_model(tmp_path / "swapped"), x), outputs(theirs, x)) > 100 * 1e-4
    renamed = {k.replace(block + "value.", block + "valuex."): v for k, v in sd.items()}
    shutil.copytree(path, tmp_path / "renamed")
    write_safetensors(renamed, tmp_path / "renamed" / "model.safetensors")
    with pytest.raises(CheckpointError, match="valuex"):
        swinkit.load_model(tmp_path / "renamed")


# ----------------------------------------------------------------------------------------------------------
# convert, inspect, save


PROCESSOR = ["processor_config.json", "tokenizer.json", "tokenizer_config.json"]  # what save_pretrained wrote


def test_convert_to_swinkit_and_back_to_transformers(hf_dir, tmp_path, capsys):
    path, theirs = hf_dir
    assert main(["convert", str(path), str(tmp_path / "sk"), "--to", "swinkit"]) == 0
    assert "wrote" in capsys.readouterr().out
    config = json.loads((tmp_path / "sk" / "config.json").read_text())
    assert config["backbone_config"]["model_type"] == "swinkit"
    assert config["backbone_config"]["out_indices"] == [2, 3, 4]
    assert all((tmp_path / "sk" / n).read_bytes() == (path / n).read_bytes() for n in PROCESSOR)
    first = swinkit.load_model(path).state_dict()
    assert all(torch.equal(v, first[k]) for k, v in swinkit.load_model(tmp_path / "sk").state_dict().items())

    assert main(["convert", str(tmp_path / "sk"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["backbone_config"]["model_type"] == "swin"  # from_pretrained builds it without swinkit
    assert all((tmp_path / "hf" / n).is_file() for n in PROCESSOR)
    back, info = transformers.GroundingDinoForObjectDetection.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(back.model.backbone.conv_encoder.model).__name__ == "SwinBackbone"
    x = inputs(path)
    ref, out = outputs(theirs, x), outputs(back.eval(), x)
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.pred_boxes, ref.pred_boxes)  # the same weights

    assert main(["inspect", str(tmp_path / "sk")]) == 0
    text = capsys.readouterr().out
    assert "format:   swinkit (transformers GroundingDinoForObjectDetection" in text
    assert "swinkit's SwinkitBackbone), stages [2, 3, 4]" in text and "2 layers, vocab 1024" in text
    assert "20 queries" in text and "processor: tokenizer.json" in text


def test_save_model_writes_a_directory_load_model_reads(hf_dir, tmp_path):
    path, theirs = hf_dir
    assert family_of_model(theirs) is GROUNDING  # transformers' own model, its Swin converted on saving
    swinkit.save_model(theirs, tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["backbone_config"]["model_type"] == "swinkit"
    back = swinkit.load_model(tmp_path / "saved")
    ref = swinkit.load_model(path).state_dict()
    assert back.state_dict().keys() == ref.keys() and all(torch.equal(v, ref[k]) for k, v in back.state_dict().items())
    assert family_of_state_dict(read_weights(path / "model.safetensors")[0]) is GROUNDING


def test_missing_config_wrong_overrides_and_formats_are_errors(hf_dir, tmp_path, capsys):
    path, _ = hf_dir
    shutil.copy(path / "model.safetensors", tmp_path / "gdino.safetensors")
    with pytest.raises(CheckpointError, match="without a config.json beside them"):
        swinkit.load_model(tmp_path / "gdino.safetensors")
    with pytest.raises(CheckpointError, match="class_map, use_ema and config overrides do not apply"):
        swinkit.load_model(path, window_size=7)
    assert main(["convert", str(path), str(tmp_path / "x"), "--to", "mmseg"]) == 2
    assert "--to mmseg: this is a GroundingDINO; choose one of swinkit, hf" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------------------
# swinkit predict


def images(tmp_path) -> list:
    from PIL import Image

    rng = torch.Generator().manual_seed(1)
    paths = []
    for name, (h, w) in (("wide", (75, 101)), ("tall", (120, 64))):
        pixels = torch.randint(0, 256, (h, w, 3), generator=rng, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        paths.append(tmp_path / f"{name}.png")
    return paths


def test_predict_draws_and_lists_the_prompted_phrases(hf_dir, tmp_path, capsys):
    """Two images of different sizes through `swinkit predict` (the swinkit-converted directory): the JSON equals
    transformers' own model through its processor and post-processing, boxes clipped to the image."""
    from PIL import Image

    path, theirs = hf_dir
    assert main(["convert", str(path), str(tmp_path / "sk"), "--to", "swinkit"]) == 0
    files, out = images(tmp_path), tmp_path / "out"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp_path / "sk"), *map(str, files), "--prompt", "A person . a bicycle",
                 "--box-threshold", "0.3", "--text-threshold", "0.2", "--out", str(out), "--device", "cpu"]) == 0
    assert "detection(s)" in capsys.readouterr().out
    processor = transformers.GroundingDinoProcessor.from_pretrained(path)
    for f in files:
        record = json.loads((out / f"{f.stem}.json").read_text())
        image = Image.open(f).convert("RGB")
        w, h = image.size
        assert record["size"] == [h, w] and record["prompt"] == "a person . a bicycle ."
        assert Image.open(out / f"{f.stem}.png").size == (w, h)
        x = processor(images=image, text="a person . a bicycle .", return_tensors="pt")
        with torch.no_grad():
            ref = processor.post_process_grounded_object_detection(theirs(**x), x["input_ids"], threshold=0.3,
                                                                   text_threshold=0.2, target_sizes=[(h, w)])[0]
        order = ref["scores"].argsort(descending=True)  # predict lists the best first
        boxes = ref["boxes"][order]
        boxes[:, 0::2], boxes[:, 1::2] = boxes[:, 0::2].clamp(0, w), boxes[:, 1::2].clamp(0, h)  # clipped
        dets = record["detections"]
        assert len(dets) == len(order) > 0
        assert [d["score"] for d in dets] == [round(s, 4) for s in ref["scores"][order].tolist()]
        assert torch.allclose(torch.tensor([d["box"] for d in dets]), boxes, atol=0.051)  # rounded to 0.1 px
        for d in dets:
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
            assert set(d["phrase"].split()) <= {"a", "person", "bicycle"}  # no "." and no [SEP]


def test_predict_errors(hf_dir, tmp_path, capsys):
    path, _ = hf_dir
    files = images(tmp_path)
    with pytest.raises(SystemExit):  # argparse: --prompt is required
        main(["predict", "--checkpoint", str(path), str(files[0]), "--out", str(tmp_path / "out")])
    assert "--prompt" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(path / name, tmp_path / "bare" / name)
    assert main(["predict", "--checkpoint", str(tmp_path / "bare"), str(files[0]), "--prompt", "a cat .",
                 "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "has no tokenizer.json or vocab.txt and no preprocessor_config.json or processor_config.json" in err
    assert main(["predict", "--checkpoint", str(path), str(files[0]), "--prompt", " . ",
                 "--out", str(tmp_path / "out")]) == 1
    assert "names no phrase" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# the variants


def test_variants_have_transformers_parameter_counts():
    """grounding_dino_swin_t is transformers' default GroundingDinoConfig (IDEA-Research/grounding-dino-tiny's) on
    Swin-T: the same parameters, less the final LayerNorm transformers' SwinBackbone stores but never uses."""
    from swinkit.counting import measure_grounding_variant

    row = measure_grounding_variant("grounding_dino_swin_t")
    swin_t = transformers.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                     out_indices=[2, 3, 4])
    with torch.device("meta"):
        ref = transformers.GroundingDinoForObjectDetection(transformers.GroundingDinoConfig(backbone_config=swin_t))
    assert round(row["params_m"] * 1e6) == sum(p.numel() for p in ref.parameters()) - 2 * 768
    assert swinkit.families.family_of_variant("grounding_dino_swin_b") is GROUNDING
    assert GROUNDING.variants["grounding_dino_swin_t"]["paper_coco_ap"] == 48.4
