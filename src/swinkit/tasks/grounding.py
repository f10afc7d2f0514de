"""Open-vocabulary detection with GroundingDINO (transformers' model on swinkit's Swin, models/grounding.py):
`swinkit predict --checkpoint DIR IMAGES --prompt "a person . a bicycle ."` finds the prompted phrases and writes,
per image, a PNG with the boxes and phrases drawn and a JSON of boxes, scores and phrases. transformers'
GroundingDinoProcessor, built from the checkpoint directory's tokenizer and processor files, tokenises the prompt,
resizes the image and turns the outputs into boxes and phrases. swinkit does not train or evaluate GroundingDINO.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..io.files import CheckpointError, atomic_write, dumps, plan_outputs, write_json
from ..io.formats.grounding import load_grounding, missing_processor_files
from ..io.images import default_palette, label_font, load_image
from ..io.raw import read_raw
from .base import Loaded, Task, TaskSettings


def normalise_prompt(prompt: str) -> str:
    """GroundingDINO reads lowercase phrases separated by " . ", the last one closed by "." too."""
    prompt = prompt.strip().lower()
    if not prompt.strip(". "):
        raise ValueError(f"--prompt {prompt!r} names no phrase: give the phrases to find separated by ' . ', e.g. "
                         "--prompt \"a person . a bicycle .\"")
    return prompt if prompt.endswith(".") else prompt + " ."


def ground(model, processor, image, prompt: str, box_threshold: float, text_threshold: float,
           device: torch.device) -> list[dict]:
    """One PIL image's detections of `prompt`: [{"phrase", "score", "box": [x0, y0, x1, y1] in pixels}], best first.
    A box keeps its query's best score over the prompt's tokens when that exceeds box_threshold; its phrase is the
    tokens whose score exceeds text_threshold (transformers' post-processing, as the official demo), without the
    "." separators and special tokens ([SEP] scores as a token too). Boxes are clipped to the image (a predicted
    centre and size may reach past its border)."""
    inputs = processor(images=image, text=prompt, return_tensors="pt").to(device)
    if inputs["input_ids"].shape[1] > model.config.max_text_len:
        raise ValueError(f"--prompt is {inputs['input_ids'].shape[1]} tokens long; this model reads at most "
                         f"{model.config.max_text_len}: shorten it")
    with torch.no_grad():
        out = model(**inputs)
    w, h = image.size
    res = processor.post_process_grounded_object_detection(out, inputs["input_ids"], threshold=box_threshold,
                                                           text_threshold=text_threshold, target_sizes=[(h, w)])[0]
    boxes = res["boxes"].float().cpu()  # (N, 4) x0, y0, x1, y1
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    special = set(processor.tokenizer.all_special_tokens)
    phrases = [" ".join(t for t in label.replace(".", " ").split() if t not in special) for label in res["text_labels"]]
    return [{"phrase": phrases[i], "score": round(float(res["scores"][i]), 4),
             "box": [round(v, 1) for v in boxes[i].tolist()]} for i in res["scores"].argsort(descending=True).tolist()]


def draw_grounding(img: torch.Tensor, dets: list[dict], phrases: list[str]) -> torch.Tensor:
    """(3, H, W) uint8 with each detection's box and "phrase score" drawn, one colour per phrase of the prompt."""
    from torchvision.utils import draw_bounding_boxes

    if not dets:
        return img
    palette = default_palette(len(phrases) + 1)
    colour = lambda p: palette[phrases.index(p) if p in phrases else len(phrases)]  # noqa: E731  (others: the last)
    size = max(12, min(img.shape[-2:]) // 30)  # readable at any image size (PIL's default bitmap font is 11 px)
    return draw_bounding_boxes(img, torch.tensor([d["box"] for d in dets]),
                               labels=[f"{d['phrase'] or '?'} {d['score']:.2f}" for d in dets],
                               colors=[colour(d["phrase"]) for d in dets], width=max(2, size // 6), font=label_font(),
                               font_size=size)


class GroundTask(Task):
    """Prediction only: a GroundingDINO is trained with transformers and read by swinkit (io.formats.grounding)."""
    name, primary_metric, Settings = "ground", "map", TaskSettings
    recipes, default_recipe = {"default": {}}, "default"

    @classmethod
    def resolve(cls, flat: dict, given: dict) -> dict:
        raise ValueError("swinkit does not train GroundingDINO: fine-tune it with transformers "
                         "(GroundingDinoForObjectDetection computes its loss from labels), then `swinkit convert` or "
                         "`swinkit predict --prompt` the directory it saves")

    @classmethod
    def load(cls, path: Path, ck: dict | None) -> Loaded:
        """A GroundingDINO model directory (swinkit's or transformers' backbone) with its tokenizer and processor
        files, which are checked first: without them there is nothing to predict with."""
        folder = path if path.is_dir() else path.parent
        missing = missing_processor_files(folder)
        if missing:
            raise CheckpointError(f"{folder} has no {' and no '.join(missing)}: GroundingDINO needs its tokenizer and "
                                  "image processor to read a prompt and an image. Copy them from the model's source "
                                  "directory (e.g. IDEA-Research/grounding-dino-tiny), or save a "
                                  "GroundingDinoProcessor there with save_pretrained")
        return Loaded(cls, load_grounding(read_raw(path)), {}, folder)

    @classmethod
    def run_eval(cls, loaded: Loaded, args: argparse.Namespace) -> tuple[dict, str]:
        raise ValueError(f"{loaded.path} is a GroundingDINO: swinkit has no evaluation for open-vocabulary "
                         "detection; `swinkit predict --prompt` draws its detections")

    @classmethod
    def add_predict_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--prompt", required=True, help="the phrases to find, lowercase, separated by ' . ', "
                                                            "e.g. \"a person . a bicycle .\"")
        parser.add_argument("--box-threshold", type=float, default=0.35,
                            help="keep boxes whose best token score exceeds this (default 0.35, the official demo's)")
        parser.add_argument("--text-threshold", type=float, default=0.25,
                            help="a box's phrase: its tokens scoring above this (default 0.25)")
        parser.add_argument("--out", type=Path, default=Path("predictions"),
                            help="folder for <name>.png (drawn boxes) and <name>.json (default predictions/)")

    @classmethod
    def run_predict(cls, loaded: Loaded, args: argparse.Namespace) -> int:
        from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
        from transformers import GroundingDinoProcessor

        for flag, v in (("--box-threshold", args.box_threshold), ("--text-threshold", args.text_threshold)):
            if not 0 <= v <= 1:
                raise ValueError(f"{flag} must be in [0, 1], got {v}")
        prompt = normalise_prompt(args.prompt)
        phrases = [p.strip() for p in prompt.split(".") if p.strip()]
        processor = GroundingDinoProcessor.from_pretrained(loaded.path)
        model, device = loaded.model, torch.device(args.device)
        model.to(device).eval()
        plan = plan_outputs(args.images, args.out, ("{stem}.png", "{stem}.json"), args.overwrite)
        args.out.mkdir(parents=True, exist_ok=True)
        failed = 0
        for path, (image_path, json_path) in zip(args.images, plan):
            try:
                image = load_image(path)
            except (OSError, ValueError) as e:
                failed += 1
                print(f"error: cannot read {path}: {e}", file=sys.stderr)
                continue
            dets = ground(model, processor, image, prompt, args.box_threshold, args.text_threshold, device)
            drawn = draw_grounding(pil_to_tensor(image), dets, phrases)
            atomic_write(image_path, lambda p: to_pil_image(drawn).save(p, format="PNG"))
            record = {"image": str(path), "size": [image.height, image.width], "prompt": prompt,
                      "drawn": str(image_path), "detections": dets}
            write_json(json_path, record, indent=1)
            if args.json:
                print(dumps(record))
            else:
                top = ", ".join(f"{d['phrase'] or '?'} {d['score']:.2f}" for d in dets[:5])
                print(f"{path}: {len(dets)} detection(s){': ' + top if dets else ''} -> {image_path}, {json_path}")
        return 1 if failed else 0
