"""The Adaptor (shapes, parameter count, persistence, determinism) and the CLIP loss."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from adaptor.model import Adaptor, AdaptorConfig, ClipLoss, clip_loss

# -- clip_loss -------------------------------------------------------------------------


def _reference_loss(image: list, text: list, scale: float, t2i_weight: float) -> float:
    """Weighted symmetric InfoNCE in plain Python: rows = images, columns = texts."""
    n = len(image)
    logits = [[scale * sum(a * b for a, b in zip(i, t, strict=True)) for t in text] for i in image]

    def ce(rows: list) -> float:
        return sum(math.log(sum(math.exp(v) for v in row)) - row[k] for k, row in enumerate(rows))

    i2t = ce(logits) / n
    t2i = ce([[logits[r][c] for r in range(n)] for c in range(n)]) / n
    return (1 - t2i_weight) * i2t + t2i_weight * t2i


def test_clip_loss_hand_computed_2x2() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # logits = 10 * [[0.6, 1.0], [0.8, 0.0]] = [[6, 10], [8, 0]]
    i2t = (
        (math.log(math.exp(6) + math.exp(10)) - 6) + (math.log(math.exp(8) + math.exp(0)) - 0)
    ) / 2
    t2i = (
        (math.log(math.exp(6) + math.exp(8)) - 6) + (math.log(math.exp(10) + math.exp(0)) - 0)
    ) / 2
    scale = torch.tensor(math.log(10.0))

    got = clip_loss(image, text, scale, t2i_weight=0.75).item()
    assert got == pytest.approx(0.25 * i2t + 0.75 * t2i, rel=1e-6)
    assert clip_loss(image, text, scale, t2i_weight=0.0).item() == pytest.approx(i2t, rel=1e-6)
    assert clip_loss(image, text, scale, t2i_weight=1.0).item() == pytest.approx(t2i, rel=1e-6)
    # Asymmetric case, so the direction the weight applies to matters.
    assert i2t != pytest.approx(t2i)


def test_clip_loss_matches_plain_python_3x3() -> None:
    gen = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(3, 4, generator=gen, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(3, 4, generator=gen, dtype=torch.float64), dim=-1)
    for log_scale, weight in [(math.log(1 / 0.07), 0.25), (0.0, 0.7), (math.log(100), 0.0)]:
        scale = torch.tensor(log_scale, dtype=torch.float64)
        got = clip_loss(image, text, scale, t2i_weight=weight)
        want = _reference_loss(image.tolist(), text.tolist(), math.exp(log_scale), weight)
        assert got.item() == pytest.approx(want, rel=1e-12)
    pure_i2t = F.cross_entropy(10.0 * image @ text.T, torch.arange(3))
    scale = torch.tensor(math.log(10.0))
    assert torch.allclose(clip_loss(image, text, scale, t2i_weight=0.0), pure_i2t)


# -- Adaptor ---------------------------------------------------------------------------


def _config(**kw) -> AdaptorConfig:
    base = dict(image_dim=12, text_dim=10, width=16, layers=2, heads=4, ffn_hidden=24)
    return AdaptorConfig(**{**base, **kw})


def _expected_parameters(c: AdaptorConfig) -> int:
    """Parameter count from the config formulas, independent of the module tree."""
    w, f = c.width, c.ffn_hidden
    proj = (c.image_dim + 1) * w + (c.text_dim + 1) * w
    proj += sum((d + 1) * w for d in (c.image_patch_dim, c.text_state_dim) if d)
    attn = (3 * w * w + 3 * w) + (w * w + w)  # in_proj + out_proj
    ffn = (w * f + f) + (f * w + w)
    norms = 2 * 2 * w  # two LayerNorms (weight + bias) per side
    side = attn + ffn + norms
    final = 2 * 2 * w if c.norm == "pre" and c.layers else 0
    return proj + c.layers * 2 * side + final + 1  # + logit_scale


def _unit(x: torch.Tensor) -> bool:
    return torch.allclose(x.norm(dim=-1), torch.ones(x.shape[0]), atol=1e-5)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_adaptor_shapes_and_unit_norm(norm: str) -> None:
    torch.manual_seed(0)
    cfg = _config(norm=norm, image_patch_dim=6, text_state_dim=5)
    model = Adaptor(cfg).eval()
    b = 3
    image, text = torch.randn(b, 12), torch.randn(b, 10)

    out = model(image, text)
    assert out.image.shape == (b, 16) and out.text.shape == (b, 16)
    assert _unit(out.image) and _unit(out.text)
    assert out.logit_scale.item() == pytest.approx(math.log(1 / 0.07))

    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4, [True] + [False] * 6])
    states = torch.randn(b, 7, 5)
    tok = model(
        image, text, image_tokens=torch.randn(b, 9, 6), text_tokens=states, text_token_mask=mask
    )
    assert tok.image.shape == (b, 16) and tok.text.shape == (b, 16)
    assert _unit(tok.image) and _unit(tok.text)
    assert torch.isfinite(tok.image).all() and torch.isfinite(tok.text).all()

    # Padded positions are ignored: changing them changes nothing.
    states2 = states.clone()
    states2[~mask] = 123.0
    assert torch.allclose(
        model.encode_text(text, states, mask), model.encode_text(text, states2, mask)
    )
    assert not torch.allclose(model.encode_text(text, states), model.encode_text(text, states2))

    solo = model(image)
    assert solo.text is None and solo.image.shape == (b, 16) and _unit(solo.image)
    assert torch.equal(solo.image, model.encode_image(image))
    assert _unit(model.encode_text(text))
    # The image-only path differs from the paired path (self- vs cross-attention).
    assert not torch.allclose(solo.image, out.image)


@pytest.mark.parametrize(
    ("wiring", "norm"), [("ours", "post"), ("ours", "pre"), ("reference", "post")]
)
def test_last_layer_updates_only_the_output_token(wiring: str, norm: str) -> None:
    """The last layer computes the first token alone: the same outputs as every token."""
    torch.manual_seed(0)
    model = Adaptor(_config(norm=norm, wiring=wiring, image_patch_dim=6, text_state_dim=5))
    model.eval()
    image, text = torch.randn(3, 12), torch.randn(3, 10)
    patches, states = torch.randn(3, 9, 6), torch.randn(3, 7, 5)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4, [True] + [False] * 6])

    def every_token(img: torch.Tensor | None, txt: torch.Tensor | None, pad=None):  # noqa: ANN001, ANN202
        for layer in model.layers:
            img, txt = layer(img, txt, pad)  # first_only=False: all tokens updated
        return img, txt

    with torch.no_grad():
        img, _ = every_token(model._image_seq(image, patches), None)
        seq, pad = model._text_seq(text, states, mask)
        _, txt = every_token(None, seq, pad)
        assert img.shape[1] == 10 and txt.shape[1] == 8
        full_image = F.normalize(model.image_final_norm(img[:, 0]), dim=-1)
        full_text = F.normalize(model.text_final_norm(txt[:, 0]), dim=-1)
        assert torch.allclose(model.encode_image(image, patches), full_image, atol=1e-6)
        assert torch.allclose(model.encode_text(text, states, mask), full_text, atol=1e-6)
        if wiring == "ours":  # paired: each side over all of the other's tokens
            img, txt = every_token(model._image_seq(image, patches), seq, pad)
            out = model(image, text, image_tokens=patches, text_tokens=states, text_token_mask=mask)
            assert torch.allclose(
                out.image, F.normalize(model.image_final_norm(img[:, 0]), dim=-1), atol=1e-6
            )
            assert torch.allclose(
                out.text, F.normalize(model.text_final_norm(txt[:, 0]), dim=-1), atol=1e-6
            )


def test_adaptor_rejects_bad_inputs() -> None:
    model = Adaptor(_config())
    with pytest.raises(ValueError, match="image must have shape"):
        model(torch.randn(2, 11), torch.randn(2, 10))
    with pytest.raises(ValueError, match="batch sizes differ"):
        model(torch.randn(2, 12), torch.randn(3, 10))
    with pytest.raises(ValueError, match="image_patch_dim"):
        model(torch.randn(2, 12), image_tokens=torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match="divisible"):
        _config(width=18)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"norm": "pre"},
        {"image_patch_dim": 6, "text_state_dim": 5, "layers": 1},
        {
            "image_dim": 1280,
            "text_dim": 384,
            "width": 512,
            "layers": 1,
            "heads": 8,
            "ffn_hidden": 2048,
        },
    ],
)
def test_trainable_parameter_count(kw: dict) -> None:
    cfg = _config(**kw)
    model = Adaptor(cfg)
    assert model.num_trainable_parameters() == _expected_parameters(cfg)
    # Every parameter trains, logit_scale included.
    assert model.num_trainable_parameters() == sum(p.numel() for p in model.parameters())


def test_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    encoders = {"image": {"name": "img", "fingerprint": "abc", "dim": 12}}
    cfg = _config(image_patch_dim=6, encoders=encoders)
    model = Adaptor(cfg).eval()
    with torch.no_grad():
        model.logit_scale_raw.fill_(2.5)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]

    loaded = Adaptor.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == cfg and loaded.config.encoders == encoders
    image, text, patches = torch.randn(4, 12), torch.randn(4, 10), torch.randn(4, 3, 6)
    a, b = model(image, text, image_tokens=patches), loaded(image, text, image_tokens=patches)
    assert torch.equal(a.image, b.image) and torch.equal(a.text, b.text)
    assert torch.equal(a.logit_scale, b.logit_scale)
    assert torch.equal(model.encode_image(image), loaded.encode_image(image))
    assert AdaptorConfig.from_dict(cfg.to_dict()) == cfg


def test_from_pretrained_missing_or_inconsistent(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no Adaptor at"):
        Adaptor.from_pretrained(tmp_path / "nowhere")
    Adaptor(_config()).save_pretrained(tmp_path / "a")
    Adaptor(_config(width=32)).save_pretrained(tmp_path / "b")
    (tmp_path / "a" / "config.json").replace(tmp_path / "b" / "config.json")
    with pytest.raises(RuntimeError, match="does not match"):
        Adaptor.from_pretrained(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        Adaptor.from_pretrained(tmp_path / "a")


def test_logit_scale_is_clamped() -> None:
    model = Adaptor(_config())
    with torch.no_grad():
        model.logit_scale_raw.fill_(10.0)
    assert model.logit_scale.item() == pytest.approx(math.log(100))


def test_deterministic_init() -> None:
    torch.manual_seed(123)
    a = Adaptor(_config(image_patch_dim=6)).state_dict()
    torch.manual_seed(123)
    b = Adaptor(_config(image_patch_dim=6)).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- distributed ClipLoss ----------------------------------------------------------------

WORLD, LOCAL_BATCH, DIM_IN, DIM_OUT = 2, 4, 6, 5


def _toy_problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Image/text linear heads + a logit scale, and a global batch of inputs."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {"image": torch.nn.Linear(DIM_IN, DIM_OUT), "text": torch.nn.Linear(DIM_IN, DIM_OUT)}
    )
    model.register_parameter("scale", torch.nn.Parameter(torch.tensor(math.log(5.0))))
    n = WORLD * LOCAL_BATCH
    return model, torch.randn(n, DIM_IN), torch.randn(n, DIM_IN)


def _loss_and_grads(
    model: torch.nn.Module, x_img: torch.Tensor, x_txt: torch.Tensor
) -> torch.Tensor:
    image = F.normalize(model["image"](x_img), dim=-1)
    text = F.normalize(model["text"](x_txt), dim=-1)
    loss = ClipLoss(t2i_weight=0.25)(image, text, model.scale)
    loss.backward()
    return loss.detach()


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        model, x_img, x_txt = _toy_problem()
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        loss = _loss_and_grads(model, x_img[rows], x_txt[rows])
        # What DDP does: average losses (for reporting) and gradients over ranks.
        dist.all_reduce(loss)
        grads = {}
        for name, p in model.named_parameters():
            dist.all_reduce(p.grad)
            grads[name] = p.grad / WORLD
        torch.save({"loss": loss / WORLD, "grads": grads}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_clip_loss_equals_single_worker(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    model, x_img, x_txt = _toy_problem()
    want_loss = _loss_and_grads(model, x_img, x_txt)
    want = {name: p.grad for name, p in model.named_parameters()}
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(got["loss"], want_loss, atol=1e-5, rtol=0)
        assert got["grads"].keys() == want.keys()
        for name, g in want.items():
            assert g.abs().sum() > 0
            assert torch.allclose(got["grads"][name], g, atol=1e-5, rtol=0), name
