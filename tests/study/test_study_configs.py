"""The shipped study configs load, and every encoder they name is one the registry builds
(the paper's hub encoders checked offline with randomly initialised stand-ins of the same
architectures; the BERT family's `hf:…@pooler` path is tested on a tiny BERT in
tests/encoders/test_encoders.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptor.config.study import load_study
from adaptor.encoders import build_image_encoder
from adaptor.encoders.registry import check_encoder_name

CONFIGS = Path(__file__).parents[2] / "pipelines" / "configs"


@pytest.mark.parametrize("name", ["study-default.yaml", "study-paper.yaml"])
def test_study_config_loads_and_names_known_encoders(name: str) -> None:
    cfg = load_study(CONFIGS / name)
    for image, text in cfg.encoders.pair_list():
        check_encoder_name("image", image)
        check_encoder_name("text", text)
    for preset in cfg.presets:
        cfg.preset_options(preset)


def test_paper_grid_is_five_text_by_three_image_encoders() -> None:
    cfg = load_study(CONFIGS / "study-paper.yaml")
    assert (len(cfg.encoders.images()), len(cfg.encoders.texts())) == (3, 5)
    assert all(t.endswith("@pooler") for t in cfg.encoders.texts())  # as the reference
    assert set(cfg.evaluate) == {"rsna", "covidx", "siim"}


@pytest.mark.slow
def test_paper_image_architectures_build_offline() -> None:
    """Each hub image encoder of the paper's grid, randomly initialised (no download)."""
    cfg = load_study(CONFIGS / "study-paper.yaml")
    for name in cfg.encoders.images():
        encoder = build_image_encoder(f"{name}@random")
        assert encoder.info.dim in (384, 768, 1024), name
