"""Parameter-efficient tuning on every encoder family: counts, what trains, deltas, merging.

Families: a small timm ViT, a small open_clip ViT (``nn.MultiheadAttention``), the default
text encoder (MiniLM, a Hugging Face BERT) and the default image encoder (EfficientNet-Lite0).
Expected trainable counts are computed here from each model's own attribute names, not
with the type-based discovery under test.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from adaptor.model import Adaptor, AdaptorConfig, clip_loss
from adaptor.peft import TuningError, apply_tuning, merge_lora, unused_parameters
from adaptor.peft.checkpointing import enable_gradient_checkpointing
from adaptor.peft.deltas import DeltaError, load_deltas, save_deltas

RANK = 4
TRANSFORMER_CASES = [
    ("frozen", {}),
    ("lora", {"rank": RANK}),
    ("lora", {"rank": RANK, "ffn": True}),
    ("adapter", {}),
    ("layernorm", {}),
    ("layernorm", {"ffn": True, "attention": True}),
    ("apla", {}),
    ("apla", {"columns": 0.25}),
    ("full", {}),
]
CNN_CASES = [("frozen", {}), ("lora", {"rank": RANK}), ("layernorm", {}), ("full", {})]


@dataclass
class Family:
    name: str
    module: nn.Module
    forward: Callable[[nn.Module], Tensor]
    expected: Callable[[nn.Module, str, dict], int]


def lora_linear(layer: nn.Linear, rank: int = RANK) -> int:
    return rank * (layer.in_features + layer.out_features)


def lora_conv(conv: nn.Conv2d, rank: int = RANK) -> int:
    fan_in = conv.in_channels // conv.groups * math.prod(conv.kernel_size)
    return rank * (fan_in + conv.out_channels)


def bottleneck(dim: int) -> int:
    m = dim // 8
    return dim * m + m + m * dim + dim


def numel(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def apla_count(proj: nn.Linear, columns: float) -> int:
    k = round(columns * proj.out_features) if columns < 1 else proj.out_features
    return k * (proj.in_features + 1)


def layernorms(model: nn.Module) -> int:
    return sum(numel(m) for m in model.modules() if isinstance(m, nn.LayerNorm))


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These models are small: one intra-op thread runs them faster than several."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ families


def timm_family() -> Family:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0,
        img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2,
    )  # fmt: skip
    pixels = torch.randn(2, 3, 32, 32)

    def expected(m: nn.Module, method: str, o: dict) -> int:
        blocks = list(m.blocks)
        if method == "lora":
            linears = [x for b in blocks for x in (b.attn.qkv, b.attn.proj)]
            linears += [x for b in blocks for x in (b.mlp.fc1, b.mlp.fc2)] if o.get("ffn") else []
            return sum(lora_linear(x) for x in linears)
        if method == "adapter":
            return sum(2 * bottleneck(b.attn.proj.out_features) for b in blocks)
        if method == "layernorm":
            extra = [b.mlp for b in blocks] if o.get("ffn") else []
            extra += [b.attn for b in blocks] if o.get("attention") else []
            return layernorms(m) + numel(*extra)
        if method == "apla":
            return sum(apla_count(b.attn.proj, o.get("columns", 1.0)) for b in blocks)
        return numel(m) if method == "full" else 0

    return Family("timm-vit", model, lambda m: m(pixels), expected)


def open_clip_family() -> Family:
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, width=64, layers=2, heads=2, mlp_ratio=4.0, output_dim=32
    )
    pixels = torch.randn(2, 3, 32, 32)

    def expected(m: nn.Module, method: str, o: dict) -> int:
        blocks = list(m.transformer.resblocks)
        d = m.transformer.width
        if method == "lora":
            total = sum(RANK * (d + 3 * d) + lora_linear(b.attn.out_proj) for b in blocks)
            if o.get("ffn"):
                total += sum(lora_linear(b.mlp.c_fc) + lora_linear(b.mlp.c_proj) for b in blocks)
            return total
        if method == "adapter":
            return len(blocks) * 2 * bottleneck(d)
        if method == "layernorm":
            extra = [b.mlp for b in blocks] if o.get("ffn") else []
            extra += [b.attn for b in blocks] if o.get("attention") else []
            return layernorms(m) + numel(*extra)
        if method == "apla":
            return sum(apla_count(b.attn.out_proj, o.get("columns", 1.0)) for b in blocks)
        return numel(m) if method == "full" else 0

    return Family("open_clip-vit", model, lambda m: m(pixels), expected)


def bert_expected(m: nn.Module, method: str, o: dict) -> int:
    """Counts for a Hugging Face BERT (attribute names of ``BertModel``)."""
    layers = list(m.encoder.layer)
    attn = [y for x in layers for y in (x.attention.self.query, x.attention.self.key,
                                        x.attention.self.value, x.attention.output.dense)]  # fmt: skip
    ffn = [y for x in layers for y in (x.intermediate.dense, x.output.dense)]
    if method == "lora":
        return sum(lora_linear(y) for y in attn + (ffn if o.get("ffn") else []))
    if method == "adapter":
        return len(layers) * 2 * bottleneck(m.config.hidden_size)
    if method == "layernorm":
        extra = (ffn if o.get("ffn") else []) + (attn if o.get("attention") else [])
        return layernorms(m) + numel(*extra)
    if method == "apla":
        return sum(apla_count(x.attention.output.dense, o.get("columns", 1.0)) for x in layers)
    # the pooler is never used by mean pooling
    return numel(m) - numel(m.pooler) if method == "full" else 0


def minilm_family() -> Family:
    """The default text encoder (22 M parameters)."""
    from adaptor.encoders import build_text_encoder

    encoder = build_text_encoder("all-minilm-l6-v2")
    tokens = encoder.make_tokenizer()(["no acute findings", "small left pleural effusion"])
    return Family(
        "minilm",
        encoder.module,
        lambda m: m(**tokens.tensors).last_hidden_state.mean(1),
        bert_expected,
    )


def bert_family() -> Family:
    """A tiny randomly initialised BERT: the same architecture at a training-test price."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32,
    )  # fmt: skip
    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones_like(ids)
    return Family(
        "hf-bert",
        BertModel(config),
        lambda m: m(input_ids=ids, attention_mask=mask).last_hidden_state.mean(1),
        bert_expected,
    )


def efficientnet_family() -> Family:
    from adaptor.encoders import build_image_encoder

    model = build_image_encoder("efficientnet-lite0").module
    pixels = torch.randn(2, 3, 64, 64)

    def expected(m: nn.Module, method: str, o: dict) -> int:
        blocks = list(m._blocks)
        if method == "lora":
            convs = [m._conv_stem, m._conv_head] + [b._project_conv for b in blocks]
            convs += [b._expand_conv for b in blocks if hasattr(b, "_expand_conv")]
            return sum(lora_conv(c) for c in convs)
        if method == "layernorm":
            bns = [m._bn0, m._bn1] + [getattr(b, n) for b in blocks for n in ("_bn0", "_bn1", "_bn2")
                                      if hasattr(b, n)]  # fmt: skip
            return numel(*bns)
        return numel(m) - numel(m._fc) if method == "full" else 0  # _fc: the unused classifier

    return Family(
        "efficientnet-lite0", model, lambda m: m.extract_features(pixels).mean((2, 3)), expected
    )


FACTORIES = {
    "timm-vit": timm_family,
    "open_clip-vit": open_clip_family,
    "hf-bert": bert_family,
    "minilm": minilm_family,
    "efficientnet-lite0": efficientnet_family,
}
_BUILT: dict[str, Family] = {}


def family(name: str) -> Family:
    if name not in _BUILT:
        _BUILT[name] = FACTORIES[name]()
    return _BUILT[name]


CASES = [
    (fam, method, opts)
    for fam in FACTORIES
    for method, opts in (CNN_CASES if fam == "efficientnet-lite0" else TRANSFORMER_CASES)
]
# training steps: every family but the 22 M-parameter MiniLM (its architecture is hf-bert's)
TRAIN_CASES = [c for c in CASES if c[0] != "minilm" and c[1] != "frozen"]


def case_id(case: tuple[str, str, dict]) -> str:
    fam, method, opts = case
    return f"{fam}-{method}" + "".join(f"-{k}{v}" for k, v in opts.items())


def tuned(fam: Family, method: str, opts: dict) -> tuple[nn.Module, object]:
    module = copy.deepcopy(fam.module).eval()
    unused = unused_parameters(module, lambda: fam.forward(module))
    return module, apply_tuning(module, method, exclude=unused, **opts)


def train_steps(fam: Family, module: nn.Module, steps: int = 2) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        loss = fam.forward(module).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return optimizer


# ------------------------------------------------------------------ tests


# the 22 M-parameter MiniLM cases are the slowest: marked slow (the full suite runs them)
COUNT_CASES = [
    pytest.param(*c, id=case_id(c), marks=[pytest.mark.slow] if c[0] == "minilm" else [])
    for c in CASES
]


@pytest.mark.parametrize(("fam_name", "method", "opts"), COUNT_CASES)
def test_trainable_count_is_what_the_method_defines(fam_name: str, method: str, opts: dict) -> None:
    fam = family(fam_name)
    module, report = tuned(fam, method, opts)
    want = fam.expected(fam.module, method, opts)
    assert report.trainable_parameters == want
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == want
    assert report.encoder_parameters == fam.expected(fam.module, "full", {})
    assert report.trainable_percent == pytest.approx(100 * want / report.encoder_parameters)
    out = fam.forward(module)  # the tuned model runs, and gradients reach exactly the trainable
    if want:
        out.square().mean().backward()
    for name, p in module.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


@pytest.mark.parametrize(("fam_name", "method", "opts"), TRAIN_CASES, ids=map(case_id, TRAIN_CASES))
def test_a_step_changes_every_trainable_and_no_frozen_parameter(
    fam_name: str, method: str, opts: dict
) -> None:
    fam = family(fam_name)
    module, _ = tuned(fam, method, opts)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    effective = {n: p.detach().clone() for n, p in module.state_dict().items()}
    optimizer = train_steps(fam, module)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable
    for name, p in module.named_parameters():
        if name in trainable:
            assert not torch.equal(p, before[name]), f"{name} did not change"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
            assert p.grad is None, f"frozen {name} has a gradient"
    state_ids = {id(p) for p in optimizer.state}
    assert state_ids == {id(p) for n, p in module.named_parameters() if n in trainable}
    if method == "apla" and opts.get("columns", 1) < 1:
        _check_only_chosen_rows_moved(module, effective)


def _check_only_chosen_rows_moved(module: nn.Module, before: dict[str, Tensor]) -> None:
    """APLA with a column subset: only the chosen rows of each projection changed."""
    from adaptor.peft.apla import RowDelta

    checked = 0
    for name, owner in module.named_modules():
        for pname, chain in getattr(owner, "parametrizations", {}).items():
            delta = next(p for p in chain if isinstance(p, RowDelta))
            now = getattr(owner, pname).detach()
            old = before[f"{name}.parametrizations.{pname}.original"]
            moved = (now != old).reshape(now.shape[0], -1).any(dim=1)
            chosen = torch.zeros_like(moved)
            chosen[delta.index] = True
            assert torch.equal(moved, chosen)
            checked += 1
    assert checked > 0


@pytest.mark.parametrize(("fam_name", "method", "opts"), TRAIN_CASES, ids=map(case_id, TRAIN_CASES))
def test_saved_deltas_load_back_to_identical_outputs(
    fam_name: str, method: str, opts: dict, tmp_path: Path
) -> None:
    fam = family(fam_name)
    module, report = tuned(fam, method, opts)
    train_steps(fam, module, steps=1)
    path = tmp_path / "deltas.safetensors"
    save_deltas(module, report, path, base={"name": fam.name})
    with torch.no_grad():
        want = fam.forward(module)
    fresh = copy.deepcopy(fam.module).eval()
    loaded = load_deltas(fresh, path, base={"name": fam.name})
    assert loaded.trainable_parameters == report.trainable_parameters
    with torch.no_grad():
        assert torch.equal(fam.forward(fresh), want)
    if method != "full":  # a deltas file holds only what tuning trains
        assert path.stat().st_size < 4 * report.trainable_parameters + 200_000
    with pytest.raises(DeltaError, match="other base weights"):
        load_deltas(copy.deepcopy(fam.module), path, base={"name": "another"})


@pytest.mark.parametrize("fam_name", [f for f in FACTORIES if f != "minilm"])
def test_lora_merge_gives_the_unmerged_outputs(fam_name: str) -> None:
    from peft.tuners.lora import LoraLayer

    fam = family(fam_name)
    module, _ = tuned(fam, "lora", {"rank": RANK})
    train_steps(fam, module)
    with torch.no_grad():
        unmerged = fam.forward(module)
        merge_lora(module)
        merged = fam.forward(module)
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    assert not torch.equal(merged, fam.forward(fam.module).detach())  # training did something
    assert not any(isinstance(m, LoraLayer) for m in module.modules())
    assert set(module.state_dict()) == set(fam.module.state_dict())  # the plain architecture again


def test_methods_that_do_not_apply_say_why() -> None:
    effnet = family("efficientnet-lite0").module
    for method in ("adapter", "apla"):
        with pytest.raises(TuningError, match="no transformer layers"):
            apply_tuning(copy.deepcopy(effnet), method)
    with pytest.raises(TuningError, match="ffn option needs transformer layers"):
        apply_tuning(copy.deepcopy(effnet), "lora", ffn=True)
    # where a method applies only in part, the report says what was done instead
    (note,) = apply_tuning(copy.deepcopy(effnet), "layernorm").notes
    assert "no LayerNorm" in note and "BatchNorm2d" in note
    (note,) = apply_tuning(copy.deepcopy(effnet), "lora").notes
    assert "depthwise convolution(s) left frozen" in note
    vit = family("timm-vit").module
    with pytest.raises(TuningError, match="fusion adapters need nn.MultiheadAttention"):
        apply_tuning(copy.deepcopy(vit), "adapter", fusion=True)
    with pytest.raises(TuningError, match="unknown tuning method 'prefix'"):
        apply_tuning(copy.deepcopy(vit), "prefix")
    with pytest.raises(TuningError, match=r"does not take option\(s\) rank"):
        apply_tuning(copy.deepcopy(vit), "apla", rank=4)
    with pytest.raises(TuningError, match="columns must be a fraction"):
        apply_tuning(copy.deepcopy(vit), "apla", columns=1.5)


def test_fusion_adapters_in_the_adaptor_cross_attention_layers() -> None:
    torch.manual_seed(0)
    config = AdaptorConfig(image_dim=16, text_dim=8, width=32, heads=4, ffn_hidden=64, layers=2)
    base = Adaptor(config).eval()
    model = copy.deepcopy(base)
    report = apply_tuning(model, "adapter", fusion=True, fusion_heads=2)
    image, text = torch.randn(6, 16), torch.randn(6, 8)
    with torch.no_grad():  # zero-initialised up-projections: an untrained adapter is the identity
        assert torch.equal(model(image, text).image, base(image, text).image)
    d, m = config.width, config.width // 8
    fusion = 2 * (d * m + m) + (4 * m * m + 4 * m) + (m * d + d)  # down, context_down, MHA, up
    assert report.trainable_parameters == config.layers * 2 * (fusion + bottleneck(d))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        out = model(image, text)
        loss = clip_loss(out.image, out.text, out.logit_scale, t2i_weight=0.25)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != p.requires_grad, name
    # the image side's fusion adapter reads the text tokens: other text, other image output
    with torch.no_grad():
        a = model(image, text).image
        b = model(image, torch.randn(6, 8)).image
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("fam_name", ["timm-vit", "efficientnet-lite0"])
def test_gradient_checkpointing_gives_the_same_gradients(fam_name: str) -> None:
    fam = family(fam_name)
    plain, _ = tuned(fam, "lora", {"rank": RANK})
    checkpointed = copy.deepcopy(plain)
    blocks = enable_gradient_checkpointing(checkpointed)
    assert len(blocks) == (2 if fam_name == "timm-vit" else len(fam.module._blocks))
    for model in (plain, checkpointed):
        fam.forward(model).square().mean().backward()
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    for name, p in checkpointed.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6)
