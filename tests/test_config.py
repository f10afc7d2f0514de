import json
import re

import pytest
import torch

import swinkit
from swinkit.config import ALIASES, SEG_VARIANTS, UNET_VARIANTS, VARIANTS, SwinConfig
from swinkit.counting import measure_variant

PUBLISHED = [n for n in VARIANTS if n not in ALIASES and VARIANTS[n]["paper_params_m"] is not None]


def test_list_models_has_timm_names_aliases_and_v2_huge_giant():
    names = swinkit.list_models()
    for n in ("swin_tiny_patch4_window7_224", "swin_large_patch4_window12_384", "swinv2_small_window16_256",
              "swinv2_large_window12to24_192to384", "swinv2_base_window12_192", "swin_t", "swinv2_l",
              "swinv2_huge_window12_192", "swinv2_giant_window12_192"):
        assert n in names
    assert SwinConfig.from_name("swin_b").embed_dim == 128


@pytest.mark.parametrize("name", PUBLISHED)
def test_params_and_flops_match_published_figures(name):
    r = measure_variant(name)
    assert abs(r["params_m"] / r["paper_params_m"] - 1) <= 0.01, r
    if r["paper_gmacs"] is not None:
        assert abs(r["gmacs"] / r["paper_gmacs"] - 1) <= 0.04, r


def test_overrides_and_json_round_trip():
    cfg = SwinConfig.from_name("swinv2_base_window12to16_192to256", num_classes=10, drop_path_rate=0.1)
    assert cfg.num_classes == 10 and cfg.drop_path_rate == 0.1
    assert cfg.pretrained_window_sizes == ((12, 12),) * 3 + ((6, 6),)
    again = SwinConfig.from_json(cfg.to_json())
    assert again == cfg


def test_window_size_forms():
    assert SwinConfig(window_size=7).window_size == ((7, 7),) * 4
    assert SwinConfig(window_size=(4, 8)).window_size == ((4, 8),) * 4
    assert SwinConfig(window_size=[7, 7, 14, (6, 3)]).window_size == ((7, 7), (7, 7), (14, 14), (6, 3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(depths=(2, 2), num_heads=(3, 6, 12)), "equal length"),
    (dict(embed_dim=96, num_heads=(5, 6, 12, 24)), "divisible by num_heads[0]=5"),
    (dict(window_size=[7, 7, 7]), "one entry per stage (4)"),
    (dict(pos_embed="sine"), "pos_embed must be one of"),
    (dict(version=3), "version must be 1 or 2"),
])
def test_invalid_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SwinConfig(**kwargs)


def test_unknown_name_and_field():
    with pytest.raises(ValueError, match="unknown model 'swin_xl'"):
        SwinConfig.from_name("swin_xl")
    with pytest.raises(TypeError, match="unknown config fields \\['windowsize'\\]"):
        swinkit.create_model("swin_t", windowsize=8)


def test_models_command_prints_every_variant(capsys):
    from swinkit.cli import main

    assert main(["models", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    from swinkit.config import (CSWIN_VARIANTS, DET_VARIANTS, GROUNDING_VARIANTS, PANOPTIC_VARIANTS,
                                POOLFORMER_VARIANTS, SWINIR_VARIANTS, VIDEO_VARIANTS)

    # then CSWin, PoolFormer, the dense, video, restoration, detection, Mask2Former and GroundingDINO models
    assert len(lines) == (len(VARIANTS) - len(ALIASES) + len(CSWIN_VARIANTS) + len(POOLFORMER_VARIANTS)
                          + len(SEG_VARIANTS) + len(UNET_VARIANTS) + len(VIDEO_VARIANTS) + len(SWINIR_VARIANTS)
                          + len(DET_VARIANTS) + len(PANOPTIC_VARIANTS) + len(GROUNDING_VARIANTS))
    assert json.loads(lines[-1])["task"] == "ground"
    assert '"name": "swin_tiny_patch4_window7_224"' in lines[0]


def test_meta_build_of_giant_costs_no_memory():
    with torch.device("meta"):
        m = swinkit.SwinTransformer(SwinConfig.from_name("swinv2_giant_window12_192"))
    assert next(m.parameters()).is_meta


def test_macs_counted_alike_on_cpu_and_meta():
    from conftest import tiny_config
    from swinkit.counting import count_macs

    cfg = tiny_config()
    cpu = swinkit.SwinTransformer(cfg).eval()
    with torch.device("meta"):
        meta = swinkit.SwinTransformer(cfg).eval()
    assert count_macs(cpu, (64, 64)) == count_macs(meta, (64, 64))  # fused CPU kernel vs math path
