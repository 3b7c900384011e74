"""``wiring="reference"`` against a small independent port of the reference Adaptor.

The port below is written from a reading of github holajoa/Adaptor-VL-SSL
(``models/adaptor.py``) in plain torch: an encoder layer whose attention takes
query = the other side and key = value = this side, residual on this side, post-norm,
ReLU feed-forward; one layer object per layer serves both sides (image first, then
text over the updated image); bias-free projections with L2 norm; the first token of
each side L2-normalised again; CLIP loss with weight 0.75 on ``logits_per_text``
rows (text→image); an unclamped logit scale.

One deliberate difference: the reference's image-only path hands a 2-D [B, D] tensor
to a ``batch_first`` ``nn.MultiheadAttention``, which reads it as ONE unbatched
sequence of length B, so an image's output depends on the other images in the batch.
The port (like our model) uses [B, 1, D]; ``test_reference_2d_quirk_is_not_reproduced``
shows the difference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import Tensor, nn

from adaptor.model import Adaptor, AdaptorConfig, ClipLoss, clip_loss

# -- the independent port ------------------------------------------------------------


class _PortLayer(nn.Module):
    """Reference encoder layer; ``query=None`` is self-attention."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(width, ffn)
        self.linear2 = nn.Linear(ffn, width)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: Tensor, query: Tensor | None = None) -> Tensor:
        attended = self.attn(src if query is None else query, src, src)[0]
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(hidden))


class _PortAdaptor(nn.Module):
    """Reference projections + layers + logit scale."""

    def __init__(self, c: AdaptorConfig) -> None:
        super().__init__()
        self.visual_projection = nn.Linear(c.image_dim, c.width, bias=False)
        self.text_projection = nn.Linear(c.text_dim, c.width, bias=False)
        self.layers = nn.ModuleList(
            _PortLayer(c.width, c.heads, c.ffn_hidden, c.dropout) for _ in range(c.layers)
        )
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))

    @staticmethod
    def _unit(x: Tensor) -> Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    def forward(self, image: Tensor, text: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        img = self._unit(self.visual_projection(image)).unsqueeze(1)
        if text is None:  # [B, 1, D], not the reference's 2-D [B, D]
            for layer in self.layers:
                img = layer(img)
            return self._unit(img[:, 0]), None
        txt = self._unit(self.text_projection(text)).unsqueeze(1)
        for layer in self.layers:
            img = layer(img, query=txt)
            txt = layer(txt, query=img)
        return self._unit(img[:, 0]), self._unit(txt[:, 0])


def _port_loss(image: Tensor, text: Tensor, logit_scale: Tensor, weight: float = 0.75) -> Tensor:
    """Reference loss: rows of ``logits_per_text`` (text→image) weighted ``weight``."""
    logits_per_text = text @ image.T * logit_scale.exp()

    def nll(dim: int) -> Tensor:
        return -torch.diag(F.log_softmax(logits_per_text, dim=dim)).mean()

    return weight * nll(1) + (1 - weight) * nll(0)


def _port_state(ours: dict[str, Tensor], layers: int) -> dict[str, Tensor]:
    """Our ``wiring="reference"`` state dict renamed to the port's; every key used once."""
    names = {
        "image_proj.weight": "visual_projection.weight",
        "text_proj.weight": "text_projection.weight",
        "logit_scale_raw": "logit_scale",
    }
    per_layer = {
        "attn.in_proj_weight": "attn.in_proj_weight",
        "attn.in_proj_bias": "attn.in_proj_bias",
        "attn.out_proj.weight": "attn.out_proj.weight",
        "attn.out_proj.bias": "attn.out_proj.bias",
        "ffn.0.weight": "linear1.weight",
        "ffn.0.bias": "linear1.bias",
        "ffn.3.weight": "linear2.weight",
        "ffn.3.bias": "linear2.bias",
        "norm_attn.weight": "norm1.weight",
        "norm_attn.bias": "norm1.bias",
        "norm_ffn.weight": "norm2.weight",
        "norm_ffn.bias": "norm2.bias",
    }
    for i in range(layers):
        names.update({f"layers.{i}.shared.{a}": f"layers.{i}.{b}" for a, b in per_layer.items()})
    assert set(names) == set(ours), set(names) ^ set(ours)
    return {names[k]: v.clone() for k, v in ours.items()}


def _config(wiring: str = "reference", **kw) -> AdaptorConfig:
    base = dict(image_dim=12, text_dim=10, width=48, layers=2, heads=12, ffn_hidden=64)
    return AdaptorConfig(**{**base, "dropout": 0.1, "wiring": wiring, **kw})


def _perturbed(config: AdaptorConfig, seed: int = 0) -> Adaptor:
    """A model whose every parameter (LayerNorms and logit scale too) is off its init."""
    torch.manual_seed(seed)
    model = Adaptor(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


# -- tests ----------------------------------------------------------------------------


def test_reference_matches_independent_port() -> None:
    config = _config()
    ours = _perturbed(config)
    port = _PortAdaptor(config).eval()
    port.load_state_dict(_port_state(ours.state_dict(), config.layers))
    gen = torch.Generator().manual_seed(1)
    image, text = torch.randn(9, 12, generator=gen), torch.randn(9, 10, generator=gen)

    with torch.no_grad():
        out = ours(image, text)
        want_image, want_text = port(image, text)
        solo, _ = port(image)
        assert torch.allclose(out.image, want_image, atol=1e-6, rtol=0)
        assert torch.allclose(out.text, want_text, atol=1e-6, rtol=0)
        assert torch.allclose(ours(image).image, solo, atol=1e-6, rtol=0)
        assert torch.allclose(ours.encode_image(image), solo, atol=1e-6, rtol=0)
        assert torch.equal(out.logit_scale, port.logit_scale)

    # The loss on the same embeddings (float64: float32 rounding alone reaches ~1e-6).
    image, text, scale = (x.double() for x in (out.image, out.text, out.logit_scale))
    want = _port_loss(image, text, scale)
    for got in (
        clip_loss(image, text, scale, t2i_weight=0.75),
        ClipLoss(t2i_weight=0.75)(image, text, scale),
    ):
        assert abs(got.item() - want.item()) <= 1e-6
    # The weight's direction matters on this batch: swapping it is far off.
    swapped = _port_loss(image, text, scale, weight=0.25)
    assert abs(swapped.item() - want.item()) > 1e-3


def test_reference_logit_scale_is_unclamped() -> None:
    for wiring, want in (("reference", 6.0), ("ours", math.log(100))):
        model = Adaptor(_config(wiring))
        with torch.no_grad():
            model.logit_scale_raw.fill_(6.0)
        assert model.logit_scale.item() == pytest.approx(want)


def test_one_token_reference_mixes_nothing_ours_leaks() -> None:
    gen = torch.Generator().manual_seed(2)
    image, text = torch.randn(8, 12, generator=gen), torch.randn(8, 10, generator=gen)
    shuffled = text[torch.randperm(8, generator=gen)]
    with torch.no_grad():
        ref = _perturbed(_config("reference"))
        paired = ref(image, text)
        assert torch.equal(paired.image, ref.encode_image(image))
        assert torch.equal(paired.text, ref.encode_text(text))
        assert torch.equal(ref(image, shuffled).image, paired.image)

        # Ours: the image output is a function of the paired text (the leak).
        ours = _perturbed(_config("ours"))
        paired = ours(image, text)
        assert not torch.allclose(paired.image, ours.encode_image(image), atol=1e-3)
        assert not torch.allclose(ours(image, shuffled).image, paired.image, atol=1e-3)


def _noise_loss(wiring: str, batch: int = 64, steps: int = 150) -> tuple[float, float]:
    """Train on independent Gaussian image/text pairs; (mean of last 20 steps, fresh batch)."""
    torch.manual_seed(0)
    config = AdaptorConfig(
        image_dim=32, text_dim=32, width=16, layers=2, heads=4, ffn_hidden=32, dropout=0.1
    )
    model = Adaptor(AdaptorConfig.from_dict({**config.to_dict(), "wiring": wiring}))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        image, text = torch.randn(batch, 32, generator=gen), torch.randn(batch, 32, generator=gen)
        out = model(image, text)
        loss = clip_loss(out.image, out.text, out.logit_scale, t2i_weight=0.75)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        image, text = torch.randn(batch, 32, generator=gen), torch.randn(batch, 32, generator=gen)
        out = model(image, text)
        fresh = clip_loss(out.image, out.text, out.logit_scale, t2i_weight=0.75).item()
    return sum(losses[-20:]) / 20, fresh


def test_noise_reference_stays_at_chance_ours_collapses() -> None:
    """Nothing links image and text, so only a shortcut can beat chance (ln B)."""
    chance = math.log(64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only add contention
    try:
        reference, ours = _noise_loss("reference"), _noise_loss("ours")
    finally:
        torch.set_num_threads(threads)
    for loss in reference:
        assert abs(loss - chance) < 0.1 * chance, reference
    for loss in ours:
        assert loss < 0.25 * chance, ours


def test_reference_2d_quirk_is_not_reproduced() -> None:
    """Each image's embedding is independent of the batch (the reference's 2-D path is not)."""
    config = _config()
    model = _perturbed(config)
    port = _PortAdaptor(config).eval()
    port.load_state_dict(_port_state(model.state_dict(), config.layers))
    image = torch.randn(6, 12)
    with torch.no_grad():
        full, alone = model.encode_image(image), model.encode_image(image[:1])
        assert torch.allclose(full[:1], alone, atol=1e-6, rtol=0)
        # The reference's call: a [B, D] tensor is one sequence of B tokens.
        x = port._unit(port.visual_projection(image))
        quirk = port.layers[1](port.layers[0](x))
        single = port.layers[1](port.layers[0](x[:1]))
        assert not torch.allclose(port._unit(quirk[:1]), port._unit(single), atol=1e-3)


def test_reference_config_and_inputs() -> None:
    with pytest.raises(ValueError, match="wiring: must be 'ours' or 'reference'"):
        _config("theirs")
    with pytest.raises(ValueError, match="post-norm"):
        _config(norm="pre")
    assert AdaptorConfig.from_dict({"image_dim": 3, "text_dim": 4}).wiring == "ours"

    c = _config(image_patch_dim=6, text_state_dim=5)
    model = Adaptor(c).eval()
    # Bias-free projections, one shared block per layer.
    w, f = c.width, c.ffn_hidden
    block = (3 * w * w + 3 * w) + (w * w + w) + (w * f + f) + (f * w + w) + 4 * w
    projections = (c.image_dim + c.text_dim + 6 + 5) * w
    assert model.num_trainable_parameters() == projections + c.layers * block + 1

    image, text = torch.randn(2, 12), torch.randn(2, 10)
    patches, states = torch.randn(2, 4, 6), torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="one global token per side"):
        model(image, text, image_tokens=patches)
    with pytest.raises(ValueError, match="one global token per side"):
        model(image, text, text_tokens=states)
    # Single-side paths take extra tokens (self-attention over them).
    out = model(image, text, image_tokens=patches, text_tokens=states, cross=False)
    assert out.image.shape == (2, 48) and out.text.shape == (2, 48)
    assert torch.equal(out.image, model.encode_image(image, patches))


def test_loss_weight_by_direction() -> None:
    gen = torch.Generator().manual_seed(3)
    image = F.normalize(torch.randn(5, 8, generator=gen), dim=-1)
    text = F.normalize(torch.randn(5, 8, generator=gen), dim=-1)
    scale = torch.tensor(math.log(1 / 0.07))
    targets = torch.arange(5)
    i2t = F.cross_entropy(scale.exp() * image @ text.T, targets)
    t2i = F.cross_entropy(scale.exp() * text @ image.T, targets)

    assert torch.allclose(clip_loss(image, text, scale, t2i_weight=1.0), t2i)
    assert torch.allclose(clip_loss(image, text, scale, t2i_weight=0.0), i2t)
    for w in (0.75, 0.25):
        mixed = clip_loss(image, text, scale, t2i_weight=w)
        assert torch.allclose(mixed, w * t2i + (1 - w) * i2t)
        assert torch.equal(ClipLoss(t2i_weight=w)(image, text, scale), mixed)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ClipLoss(t2i_weight=1.5)


def test_reference_save_load_round_trip(tmp_path: Path) -> None:
    model = _perturbed(_config())
    with torch.no_grad():
        model.logit_scale_raw.fill_(5.0)  # above the "ours" clamp
    model.save_pretrained(tmp_path / "ref")
    loaded = Adaptor.from_pretrained(tmp_path / "ref").eval()
    assert loaded.config == model.config and loaded.config.wiring == "reference"
    image, text = torch.randn(4, 12), torch.randn(4, 10)
    with torch.no_grad():
        a, b = model(image, text), loaded(image, text)
        assert torch.equal(a.image, b.image) and torch.equal(a.text, b.text)
        assert torch.equal(a.logit_scale, b.logit_scale) and a.logit_scale.item() == 5.0
        assert torch.equal(model.encode_image(image), loaded.encode_image(image))


def test_save_without_wiring_key_loads_as_ours(tmp_path: Path) -> None:
    """A folder saved before ``wiring`` existed (no key in either config copy) loads as ours."""
    model = _perturbed(_config("ours"))
    folder = tmp_path / "old"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    del config["wiring"]
    tensors = load_file(str(folder / "model.safetensors"))
    blob = save(tensors, metadata={"config": json.dumps(config, sort_keys=True)})
    (folder / "model.safetensors").write_bytes(blob)
    (folder / "config.json").write_text(json.dumps(config))

    loaded = Adaptor.from_pretrained(folder).eval()
    assert loaded.config.wiring == "ours"
    image, text = torch.randn(3, 12), torch.randn(3, 10)
    with torch.no_grad():
        assert torch.equal(loaded(image, text).image, model(image, text).image)


@pytest.mark.parametrize("wiring", ["reference", "ours"])
def test_patch_token_path(wiring: str) -> None:
    """``encode_image_tokens``: the reference's segmentation path over every patch token."""
    ours = _perturbed(_config(wiring))
    tokens = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = ours.encode_image_tokens(tokens)
        assert out.shape == (3, 5, 48)
        # one token is the image-only path before its final normalisation
        one = ours.encode_image_tokens(tokens[:, :1])[:, 0]
        assert torch.allclose(F.normalize(one, dim=-1), ours.encode_image(tokens[:, 0]), atol=1e-6)
        if wiring == "reference":  # the port's layers over the projected, unit-norm tokens
            port = _PortAdaptor(ours.config).eval()
            port.load_state_dict(_port_state(ours.state_dict(), ours.config.layers))
            seq = port._unit(port.visual_projection(tokens))
            for layer in port.layers:
                seq = layer(seq)
            assert torch.allclose(out, seq, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="7 channels; this Adaptor takes image vectors of 12"):
        ours.encode_image_tokens(torch.randn(1, 4, 7))
