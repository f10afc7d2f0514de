"""GroundingDINO checkpoints: a transformers model directory (config.json of model_type "grounding-dino" beside
model.safetensors, with the tokenizer and processor files of GroundingDinoProcessor, as IDEA-Research/grounding-dino-*
on the hub) whose image backbone is transformers' Swin, or swinkit's (a directory this module wrote). Reading turns
the Swin into swinkit's (io.formats.hfbackbone) and keeps the rest (BERT, encoder, decoder, heads) as it is; writing
gives the same directory layout with either backbone, the tokenizer and processor files copied beside it.
transformers is imported only to build the model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..files import CheckpointError, atomic_write, write_converted
from ..raw import RawCheckpoint
from .hfbackbone import BACKBONE_PREFIX, build_hf_model, export_hf_model, import_hf_model

GROUNDING_FORMATS = ("swinkit", "hf")  # swinkit: the backbone as SwinkitBackbone; hf: as transformers' SwinBackbone
BACKBONE, TEXT = BACKBONE_PREFIX["grounding-dino"], "model.text_backbone."  # where the image and text backbones are
# what GroundingDinoProcessor reads from a model directory: a BERT tokenizer (tokenizer.json, or vocab.txt for the
# slow one) and the image processor's settings (preprocessor_config.json; transformers 5 nests them in
# processor_config.json)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
PROCESSOR_FILES = (*TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json", *IMAGE_PROCESSOR_FILES)


def is_grounding_state_dict(sd: dict) -> bool:
    return any(k.startswith(BACKBONE) for k in sd) and any(k.startswith(TEXT) for k in sd)


def model_dir(raw: RawCheckpoint) -> Path:
    """The directory of a checkpoint (itself, or the folder of a weights file)."""
    return raw.path if raw.path.is_dir() else raw.path.parent


def read_config(raw: RawCheckpoint) -> dict:
    """The config.json of a GroundingDINO checkpoint (a model directory, or the folder of its weights file)."""
    path = model_dir(raw) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{raw.path} holds GroundingDINO weights without a config.json beside them: its text, "
                              "encoder and decoder settings are not in the weights. Pass the model directory "
                              "(config.json + model.safetensors, as save_pretrained writes it)")
    config = json.loads(path.read_text())
    if config.get("model_type") != "grounding-dino":
        raise CheckpointError(f"{path} is a {config.get('model_type')!r} config, but the weights beside it are a "
                              "GroundingDINO's: expected model_type 'grounding-dino'")
    return config


def _untie(sd: dict, config: dict) -> dict:
    """`sd` with the copies save_pretrained leaves out: the decoder refines boxes with the detection head's box MLPs
    (model.decoder.bbox_embed.i is bbox_embed.i), which are one MLP for every layer when decoder_bbox_embed_share
    (the default)."""
    sd = dict(sd)
    if config.get("decoder_bbox_embed_share", True):
        for k in [k for k in sd if k.startswith("bbox_embed.0.")]:
            for i in range(1, config.get("decoder_layers", 6)):
                sd.setdefault(f"bbox_embed.{i}.{k[len('bbox_embed.0.'):]}", sd[k])
    for k in [k for k in sd if k.startswith("bbox_embed.")]:
        sd.setdefault("model.decoder." + k, sd[k])
    return sd


def import_grounding(raw: RawCheckpoint, strict: bool = True, config: dict | None = None):
    """(config.json dict with swinkit's backbone_config, state dict with the backbone under SwinkitBackbone's names,
    the backbone read: hfbackbone.HFBackbone). `config`: the checkpoint's config.json, when read already."""
    return import_hf_model(raw.state_dict, config or read_config(raw), str(raw.path), strict)


def load_grounding(raw: RawCheckpoint, strict: bool = True):
    """transformers' GroundingDinoForObjectDetection on swinkit's Swin, in eval mode. A backbone key no rule explains,
    or a missing, unexpected or misshapen key of the rest, is a CheckpointError naming it (strict)."""
    from transformers import GroundingDinoForObjectDetection

    config, sd, _ = import_grounding(raw, strict)
    return build_hf_model(GroundingDinoForObjectDetection, config, _untie(sd, config), str(raw.path), strict)


def _check_format(fmt: str) -> None:
    if fmt not in GROUNDING_FORMATS:
        raise CheckpointError(f"--to {fmt}: this is a GroundingDINO; choose one of {', '.join(GROUNDING_FORMATS)}")


def write_grounding(sd: dict, config: dict, dst: Path, fmt: str = "swinkit", source: Path | None = None) -> Path:
    """A GroundingDINO directory at `dst`: model.safetensors and config.json (backbone as swinkit's, or for fmt "hf"
    as transformers' Swin, which from_pretrained loads without swinkit), and the PROCESSOR_FILES found in `source`.
    `sd` and `config` as import_grounding gives them. Each file is written atomically."""
    _check_format(fmt)
    if fmt == "hf":
        config, sd = export_hf_model(sd, config)
    config = {**config, "model_type": "grounding-dino", "architectures": ["GroundingDinoForObjectDetection"]}
    dst = Path(dst)
    write_converted(sd, dst, config, None)
    for name in PROCESSOR_FILES:
        if source is not None and (source / name).is_file():
            atomic_write(dst / name, lambda tmp, src=source / name: shutil.copyfile(src, tmp))
    return dst


def convert_grounding(raw: RawCheckpoint, dst: Path, fmt: str, meta: dict | None = None, hints=None) -> str:
    """`swinkit convert` of a GroundingDINO directory (hints: none apply; the config.json records everything)."""
    _check_format(fmt)
    config, sd, bb = import_grounding(raw)
    write_grounding(sd, config, dst, fmt, model_dir(raw))
    copied = [n for n in PROCESSOR_FILES if (model_dir(raw) / n).is_file()]
    return (f"{fmt}, GroundingDINO on {bb.config.describe(with_size=False)}, "
            f"{'with ' + ', '.join(copied) if copied else 'no tokenizer or processor files to copy'}")


def save_grounding(model, path: Path, class_names=None) -> Path:
    """A GroundingDinoForObjectDetection (either backbone) as swinkit's directory: load_model reads it back. It has
    no tokenizer: copy the source directory's (PROCESSOR_FILES) beside it to predict with it."""
    if class_names is not None:
        raise CheckpointError("a GroundingDINO has no classes: its prompt names what to find; save it without "
                              "class_names")
    config = model.config.to_dict()
    config, sd, _ = import_hf_model(model.state_dict(), config, type(model).__name__)
    return write_grounding(sd, config, path)


def missing_processor_files(folder: Path) -> list[str]:
    """What GroundingDinoProcessor needs and `folder` lacks, each as "a or b"; empty when it has everything."""
    return [" or ".join(names) for names in (TOKENIZER_FILES, IMAGE_PROCESSOR_FILES)
            if not any((folder / n).is_file() for n in names)]


def inspect_grounding(raw: RawCheckpoint) -> str:
    config = read_config(raw)
    source = config.get("backbone_config") or {}
    _, _, bb = import_grounding(raw, strict=False, config=config)
    text = config.get("text_config") or {}
    share = config.get("decoder_bbox_embed_share", True)
    tied = lambda k: k.startswith("model.decoder.bbox_embed.") or (  # noqa: E731  (the copies _untie fills)
        share and k.startswith("bbox_embed.") and not k.startswith("bbox_embed.0."))
    params = sum(v.numel() for k, v in raw.state_dict.items() if not tied(k))
    folder = model_dir(raw)
    missing = missing_processor_files(folder)
    kind = "swinkit's SwinkitBackbone" if source.get("model_type") == "swinkit" else \
        f"transformers' {source.get('model_type', 'swin')} backbone"
    lines = [f"file:     {raw.path}",
             f"format:   {'swinkit' if source.get('model_type') == 'swinkit' else 'hf'} (transformers "
             "GroundingDinoForObjectDetection, open-vocabulary detection)",
             f"params:   {params:,} (the box MLPs the decoder shares counted once)",
             f"backbone: {bb.config.describe(with_size=False)} ({kind}), stages {bb.out_indices}, window_mode "
             f"{bb.config.window_mode}",
             f"text:     BERT, hidden {text.get('hidden_size', 768)}, {text.get('num_hidden_layers', 12)} layers, "
             f"vocab {text.get('vocab_size', 30522)}, prompts up to {config.get('max_text_len', 256)} tokens",
             f"detector: d_model {config.get('d_model', 256)}, encoder {config.get('encoder_layers', 6)} / decoder "
             f"{config.get('decoder_layers', 6)} layers, {config.get('num_queries', 900)} queries, "
             f"{config.get('num_feature_levels', 4)} feature levels",
             f"processor: {', '.join(n for n in PROCESSOR_FILES if (folder / n).is_file()) or 'none'}"
             + (f" (missing {' and '.join(missing)}: `swinkit predict` needs them)" if missing else "")]
    if bb.guessed:
        lines.append(f"guessed:  {', '.join(bb.guessed)} (not recorded in the checkpoint)")
    return "\n".join(lines)
