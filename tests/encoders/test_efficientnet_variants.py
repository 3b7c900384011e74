"""EfficientNet-Lite0/1/2: offline builds, shapes, TF-reference preprocessing, fingerprints,
and an ImageNet sanity check on a real photograph."""

from __future__ import annotations

import gzip
import math
import socket

import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image

from adaptor.encoders import (
    ImageEncoder,
    UnknownEncoderError,
    build_image_encoder,
    build_text_encoder,
    describe_encoder_names,
)
from adaptor.encoders.efficientnet import VARIANTS
from adaptor.encoders.registry import EFFICIENTNET_LITE_ENCODERS, check_encoder_name

# name → (input side, timm's pretrained config, feature-map channels at strides 2..32)
EXPECTED = {
    "efficientnet-lite0": (224, "tf_efficientnet_lite0.in1k", [16, 24, 40, 112, 1280]),
    "efficientnet-lite1": (240, "tf_efficientnet_lite1.in1k", [16, 24, 40, 112, 1280]),
    "efficientnet-lite2": (260, "tf_efficientnet_lite2.in1k", [16, 24, 48, 120, 1280]),
}
LITE0_FINGERPRINT = "52a4987fe5503781dfff5ae840d771519d75978519bdced476e9ceb6d0660bb0"
MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's Grace Hopper portrait


@pytest.fixture(scope="module")
def lites() -> dict[str, ImageEncoder]:
    """All three, built with the hub offline and every socket connection refused."""

    def no_network(*args, **kwargs):
        raise AssertionError("an offline EfficientNet-Lite build touched the network")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        return {name: build_image_encoder(name) for name in EXPECTED}


def _grey_sample(name: str) -> np.ndarray:
    """A real grey image in [0, 1] from matplotlib's bundled sample data."""
    path = cbook.get_sample_data(name, asfileobj=False)
    if name.endswith(".ima.gz"):  # 256x256 16-bit MRI slice
        with gzip.open(path) as f:
            image = np.frombuffer(f.read(), np.uint16).reshape(256, 256).astype(np.float32)
        return image / image.max()
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255


def test_names_registered_everywhere() -> None:
    assert set(EFFICIENTNET_LITE_ENCODERS) == set(VARIANTS) == set(EXPECTED)
    help_text = describe_encoder_names()
    for name in EXPECTED:
        assert name in help_text
        check_encoder_name("image", name)
        with pytest.raises(UnknownEncoderError, match="Accepted names"):
            check_encoder_name("text", name)
        with pytest.raises(UnknownEncoderError, match="Accepted names"):
            build_text_encoder(name)
    for bad in ("efficientnet-lite3", "efficientnet-lite"):
        with pytest.raises(UnknownEncoderError):
            check_encoder_name("image", bad)
        with pytest.raises(UnknownEncoderError):
            build_image_encoder(bad)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_preprocess_matches_tf_reference_and_timm(name: str) -> None:
    from timm.models import get_pretrained_cfg

    side, timm_cfg, _ = EXPECTED[name]
    pre = VARIANTS[name].preprocess
    assert pre.size == (side, side) and pre.resize_mode == "shortest"
    assert pre.crop_pct == side / (side + 32)  # TF reference: resize to side + 32, crop side
    cfg = get_pretrained_cfg(timm_cfg).to_dict()
    assert cfg["input_size"] == (3, side, side)
    assert pre.interpolation == cfg["interpolation"] == "bicubic"
    assert pre.crop_pct == pytest.approx(cfg["crop_pct"], abs=5e-4)  # timm rounds to 3 places
    # TF-Lite mean 127 / std 128 on 0-255 (timm's 0.5 / 0.5 is the same to within 0.4%)
    assert pre.mean == pytest.approx((127 / 255,) * 3) and pre.std == pytest.approx(
        (128 / 255,) * 3
    )


@pytest.mark.parametrize("name", list(EXPECTED))
def test_shapes_and_feature_maps(lites: dict[str, ImageEncoder], name: str) -> None:
    encoder = lites[name]
    side, _, channels = EXPECTED[name]
    grid = math.ceil(side / 32)
    assert not encoder.module.training
    assert not any(p.requires_grad for p in encoder.module.parameters())
    rng = np.random.default_rng(0)
    pixels = torch.stack([encoder.preprocess(rng.random((200, 170 + 40 * i))) for i in range(2)])
    assert pixels.shape == (2, 3, side, side)
    out = encoder.encode(pixels, with_patches=True)
    assert out.global_.shape == (2, 1280) and out.patches.shape == (2, grid * grid, 1280)
    assert encoder.info.name == name and encoder.info.dim == encoder.patch_dim == 1280
    maps = encoder.feature_maps(pixels)
    assert [m.shape[1] for m in maps] == channels
    assert [m.shape[-1] for m in maps] == [math.ceil(side / s) for s in (2, 4, 8, 16, 32)]
    torch.testing.assert_close(maps[-1].flatten(2).transpose(1, 2), out.patches)
    torch.testing.assert_close(maps[-1].mean(dim=(2, 3)), out.global_)


def test_fingerprints_differ_and_lite0_unchanged(lites: dict[str, ImageEncoder]) -> None:
    prints = {name: encoder.info.fingerprint for name, encoder in lites.items()}
    assert len(set(prints.values())) == len(EXPECTED)
    assert prints["efficientnet-lite0"] == LITE0_FINGERPRINT  # cached lite0 shards stay valid


def test_real_images_embed_and_classify(lites: dict[str, ImageEncoder]) -> None:
    """An MRI slice gives finite embeddings; on a portrait every variant's own classifier,
    applied to the global embedding, reproduces the full model and finds the uniform, and
    the three variants' class logits agree far more than with a noise image's."""
    mri, portrait = _grey_sample("s1045.ima.gz"), _grey_sample("grace_hopper.jpg")
    noise = np.random.default_rng(1).random((300, 300), dtype=np.float32)
    logits = {}
    for name, encoder in lites.items():
        out = encoder.encode(encoder.preprocess(mri)[None], with_patches=True)
        assert torch.isfinite(out.global_).all() and torch.isfinite(out.patches).all()
        assert float(out.global_.norm()) > 0
        pixels = torch.stack([encoder.preprocess(portrait), encoder.preprocess(noise)])
        with torch.inference_mode():
            classes = encoder.module._fc(encoder.encode(pixels).global_)
            full = encoder.module(pixels.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(classes, full, atol=1e-4, rtol=1e-4)
        assert MILITARY_UNIFORM in classes[0].topk(5).indices.tolist(), name
        logits[name] = classes.numpy()
    lite0 = logits["efficientnet-lite0"]
    for name in ("efficientnet-lite1", "efficientnet-lite2"):
        same = np.corrcoef(lite0[0], logits[name][0])[0, 1]
        other = np.corrcoef(lite0[1], logits[name][0])[0, 1]
        assert same > 0.5 and same > other + 0.2, (name, same, other)
