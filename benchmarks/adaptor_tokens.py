"""Do the stored patch tokens and text token states help the Adaptor? Laterality, retrieval,
1 % classification — with and without them, all in one run on the same records.

The hypothesis (issue #16, item 4): a globally average-pooled CNN vector carries little
left/right information, so an Adaptor fed only global vectors cannot tell "left lower lobe
nodule" from "right lower lobe nodule", while the reports name sides.

(a) Probes on the frozen features (5-fold cross-validated logistic regression, AUROC of
    "the findings are on the patient's left", over records whose findings lie on one
    side): the pooled image vector; the patch tokens pooled per image half (left columns
    ‖ right columns); the text encoder's pooled vector.
(b) Our Adaptor (the default recipe of `adaptor pretrain`, objective unpaired, each side
    encoded on its own as search does) trained on global vectors only (today's default)
    and with extra tokens: ``patches`` (the image's patch tokens), ``tokens`` (also the
    text's token states; about three times the compute), each also ``+pos``, the patch
    tokens carrying a fixed 2-D sine–cosine position code (self-attention alone cannot
    tell where a token sits). Default: global, patches, patches+pos. Measured on the test split: text→image R@1/5/10;
    laterality accuracy (each test report naming one side is also encoded with the sides
    swapped; how often the true image scores its own report above the swapped one;
    chance 0.5); and 1 % / 100 % classification (the linear head of `adaptor finetune
    classify`, macro AUROC). Every variant trains under each seed; mean ± std.

    python benchmarks/adaptor_tokens.py --n 1000 --seeds 0 1 2

Prints one JSON line at the end; ``…_ratio`` = a variant with tokens ÷ global only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from adaptor.config import ClassificationOptions, PretrainOptions, RunConfig  # noqa: E402
from adaptor.data.splits import label_names_of, make_label_splits  # noqa: E402
from adaptor.data.synthetic import generate_synthetic  # noqa: E402
from adaptor.downstream.classification import train_classification_cell  # noqa: E402
from adaptor.downstream.grid import GridCell  # noqa: E402
from adaptor.embed import EmbedConfig, embed  # noqa: E402
from adaptor.encoders import build_text_encoder  # noqa: E402
from adaptor.heads.classification import label_matrix  # noqa: E402
from adaptor.metrics.retrieval import paired_recall  # noqa: E402
from adaptor.model import Adaptor, AdaptorConfig, ClipLoss  # noqa: E402
from adaptor.shards import ShardReader  # noqa: E402

VARIANTS = ("global", "patches", "patches+pos", "tokens", "tokens+pos")
DEFAULT_VARIANTS = ("global", "patches", "patches+pos")
POSITION_DIM = 64
SIDES = re.compile(r"\b(left|right)\b", re.IGNORECASE)


# ----------------------------------------------------------------------------- data


def finding_side(report: str) -> str | None:
    """ "left"/"right" when every sided finding of ``report`` lies on that patient side.

    Device sentences ("Right-sided central venous catheter …") are not findings."""
    sides = {
        m.lower()
        for sentence in re.split(r"(?<=\.)\s+", report)
        if "catheter" not in sentence.lower()
        for m in SIDES.findall(sentence)
    }
    return sides.pop() if len(sides) == 1 else None


def swap_sides(report: str) -> str:
    """The report with every finding's side swapped (device sentences untouched)."""
    swap = {"left": "right", "right": "left", "Left": "Right", "Right": "Left"}
    return " ".join(
        s if "catheter" in s.lower() else SIDES.sub(lambda m: swap[m.group(0)], s)
        for s in re.split(r"(?<=\.)\s+", report)
    )


def position_code(n_tokens: int, dim: int = POSITION_DIM) -> torch.Tensor:
    """A fixed 2-D sine–cosine code [N, dim] of a square token grid (rows, then columns)."""
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise ValueError(f"{n_tokens} patch tokens are not a square grid")
    quarter = dim // 4
    freq = 1.0 / (100.0 ** (torch.arange(quarter) / quarter))
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angle = coord[:, None].float() * freq[None]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1)


def pad_states(states: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length token states → [B, T, D] zero-padded, and the valid mask [B, T]."""
    longest = max(len(s) for s in states)
    out = torch.zeros(len(states), longest, states[0].shape[1])
    mask = torch.zeros(len(states), longest, dtype=torch.bool)
    for i, s in enumerate(states):
        out[i, : len(s)] = torch.from_numpy(s.astype(np.float32))
        mask[i, : len(s)] = True
    return out, mask


def load_set(folder: Path, n: int, seed: int) -> dict:
    """Synthesise (once), embed with patch tokens and text states (once), load everything."""
    cfg = RunConfig()
    raw, shards = folder / "raw", folder / "shards"
    if not (raw / "records.jsonl").is_file():
        generate_synthetic(raw, **{**cfg.synth.model_dump(), "n": n, "seed": seed})
    options = {**cfg.embed.model_dump(), "patch_tokens": True, "text_states": True}
    embed(EmbedConfig(source=f"synthetic:{raw}", out=shards, progress=True, **options))
    reader = ShardReader(shards)
    samples = list(reader.samples())
    reports = {}
    with open(raw / "records.jsonl", encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            reports[record["id"]] = record["report"]
    states, mask = pad_states([s["text_states"] for s in samples])
    return {
        "ids": [s["id"] for s in samples],
        "meta": [s["meta"] for s in samples],
        "reports": [reports[s["id"]] for s in samples],
        "image": torch.from_numpy(np.stack([s["image"] for s in samples]).astype(np.float32)),
        "patches": torch.from_numpy(
            np.stack([s["image_patches"] for s in samples]).astype(np.float32)
        ),
        "text": torch.from_numpy(np.stack([s["text"] for s in samples]).astype(np.float32)),
        "states": states,
        "mask": mask,
        "text_encoder": reader.manifest.encoders["text"]["name"],
    }


# ----------------------------------------------------------------------------- (a) probes


def probe_auroc(features: np.ndarray, sides: np.ndarray, seed: int = 0) -> float:
    """5-fold cross-validated AUROC of a logistic regression predicting the side."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    return float(cross_val_score(model, features, sides, cv=folds, scoring="roc_auc").mean())


def probes(data: dict) -> dict[str, float]:
    """Laterality probes on the frozen encoders' features."""
    sides = [finding_side(r) for r in data["reports"]]
    rows = [i for i, s in enumerate(sides) if s is not None]
    y = np.array([sides[i] == "left" for i in rows])
    patches = data["patches"][rows]  # [R, N, C], N a square grid in row-major order
    grid = math.isqrt(patches.shape[1])
    cols = patches.reshape(len(rows), grid, grid, -1)
    half = grid // 2
    halves = torch.cat([cols[:, :, :half].mean((1, 2)), cols[:, :, -half:].mean((1, 2))], dim=1)
    return {
        "sided_records": len(rows),
        "probe_image_global_auroc": probe_auroc(data["image"][rows].numpy(), y),
        "probe_image_halves_auroc": probe_auroc(halves.numpy(), y),
        "probe_text_global_auroc": probe_auroc(data["text"][rows].numpy(), y),
    }


# ----------------------------------------------------------------------------- (b) Adaptor


def inputs(data: dict, variant: str, rows: torch.Tensor | slice) -> dict:
    """The Adaptor's keyword inputs of ``rows`` for one variant: ``patches`` adds the image
    patch tokens, ``tokens`` also the text token states, ``+pos`` the position code."""
    if variant == "global":
        return {}
    patches = data["patches"][rows]
    if variant.endswith("+pos"):
        code = position_code(patches.shape[1]).expand(patches.shape[0], -1, -1)
        patches = torch.cat([patches, code], dim=2)
    if variant.startswith("patches"):
        return {"image_tokens": patches}
    return {
        "image_tokens": patches,
        "text_tokens": data["states"][rows],
        "text_token_mask": data["mask"][rows],
    }


def train_adaptor(data: dict, variant: str, seed: int, options: PretrainOptions) -> Adaptor:
    """Our default recipe (AdamW, warm-up + cosine, clipping, unpaired CLIP loss), last epoch."""
    from transformers import get_cosine_schedule_with_warmup

    torch.manual_seed(seed)
    train = torch.tensor([i for i, m in enumerate(data["meta"]) if m["split"] == "train"])
    extra = inputs(data, variant, slice(0, 1))
    config = AdaptorConfig(
        image_dim=data["image"].shape[1],
        text_dim=data["text"].shape[1],
        image_patch_dim=extra["image_tokens"].shape[2] if extra else None,
        text_state_dim=extra["text_tokens"].shape[2] if "text_tokens" in extra else None,
        **options.model.model_dump(),
    )
    model = Adaptor(config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=options.lr, weight_decay=options.weight_decay
    )
    steps = len(train) // options.batch_size
    total = steps * options.epochs
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(options.warmup_fraction * total), total
    )
    loss_fn = ClipLoss(t2i_weight=options.t2i_weight, gather=False)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(options.epochs):
        order = train[torch.randperm(len(train), generator=generator)]
        for step in range(steps):
            rows = order[step * options.batch_size : (step + 1) * options.batch_size]
            out = model(
                data["image"][rows], data["text"][rows], cross=False, **inputs(data, variant, rows)
            )
            loss = loss_fn(out.image, out.text, out.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            optimizer.step()
            scheduler.step()
    return model.eval()


@torch.no_grad()
def encode(model: Adaptor, data: dict, variant: str, text: dict | None = None) -> tuple:
    """Image and text embeddings of every record (``text``: other text inputs to encode)."""
    rows = torch.arange(len(data["ids"]))
    images, texts = [], []
    for chunk in rows.split(256):
        extra = inputs(data, variant, chunk)
        images.append(model.encode_image(data["image"][chunk], extra.get("image_tokens")))
        source = text or data
        states = "text_tokens" in extra
        texts.append(
            model.encode_text(
                source["text"][chunk],
                source["states"][chunk] if states else None,
                source["mask"][chunk] if states else None,
            )
        )
    return torch.cat(images), torch.cat(texts)


def swapped_texts(data: dict) -> dict:
    """Every report with its sides swapped, through the same frozen text encoder."""
    encoder = build_text_encoder(data["text_encoder"])
    tokenize = encoder.make_tokenizer()
    texts, states = [], []
    reports = [swap_sides(r) for r in data["reports"]]
    with torch.no_grad():
        for start in range(0, len(reports), 64):
            out = encoder.encode(tokenize(reports[start : start + 64]), with_states=True)
            texts.append(out.global_.float())
            lengths = out.attention_mask.sum(dim=1).tolist()
            states += [
                s[: int(n)].float().numpy() for s, n in zip(out.states, lengths, strict=True)
            ]
    padded, mask = pad_states(states)
    longest = data["states"].shape[1]  # match the stored padding width
    if padded.shape[1] < longest:
        padded = F.pad(padded, (0, 0, 0, longest - padded.shape[1]))
        mask = F.pad(mask, (0, longest - mask.shape[1]))
    return {"text": torch.cat(texts), "states": padded, "mask": mask}


def classify(data: dict, features: torch.Tensor, seed: int, splits, names) -> dict[str, float]:  # noqa: ANN001
    """Macro AUROC of the linear head of `adaptor finetune classify` at 1 % and 100 %."""
    is_train = torch.tensor([m["split"] == "train" for m in data["meta"]])
    mean, std = features[is_train].mean(0), features[is_train].std(0).clamp(min=1e-6)
    options = ClassificationOptions()
    targets, valid = label_matrix(data["meta"], names, options.uncertain)
    prepared = {
        "features": {"adaptor": (features - mean) / std},
        "targets": targets,
        "valid": valid,
        "row": {record_id: i for i, record_id in enumerate(data["ids"])},
        "splits": splits,
    }
    shared = {"config": options.model_dump(), "label_names": names}
    out = {}
    for fraction in (0.01, 1.0):
        cell = GridCell("c", {"method": "adaptor+linear", "fraction": fraction, "seed": seed})
        result = train_classification_cell(cell, shared, prepared)
        out[f"cls_{fraction:g}_auroc"] = result["metrics"]["auroc_macro"]
    return out


def evaluate(model: Adaptor, data: dict, variant: str, swapped: dict, seed: int, splits, names):  # noqa: ANN001, ANN201
    """Retrieval, laterality and classification of one trained Adaptor."""
    image, text = encode(model, data, variant)
    _, text_swapped = encode(model, data, variant, swapped)
    test = [i for i, m in enumerate(data["meta"]) if m["split"] == "test"]
    recall = paired_recall(image[test], text[test])
    sided = [i for i in test if finding_side(data["reports"][i]) is not None]
    own = (image[sided] * text[sided]).sum(1)
    other = (image[sided] * text_swapped[sided]).sum(1)
    return {
        "t2i_r@1": recall["t2i_r@1"],
        "t2i_r@5": recall["t2i_r@5"],
        "t2i_r@10": recall["t2i_r@10"],
        "laterality_accuracy": float((own > other).float().mean()),
        **classify(data, image, seed, splits, names),
    }


def summarise(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="synthetic paired records")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--epochs", type=int, default=None, help="default: adaptor pretrain's")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(DEFAULT_VARIANTS),
        help="global; patches (image patch tokens); tokens (also text token states, about 3x "
        "the compute of patches); +pos adds the position code",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("data_shards/bench-tokens"), help="work folder (reused)"
    )
    args = parser.parse_args()
    options = PretrainOptions()
    if args.epochs:
        options = options.model_copy(update={"epochs": args.epochs})

    data = load_set(args.out, args.n, seed=0)
    result: dict = {"n": len(data["ids"]), "epochs": options.epochs, **probes(data)}
    print(json.dumps({k: v for k, v in result.items()}), flush=True)
    swapped = swapped_texts(data)
    names = label_names_of(data["meta"])
    splits = make_label_splits(data["meta"], fractions=[0.01, 1.0])
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for seed in args.seeds:
        for variant in args.variants:
            started = time.perf_counter()
            model = train_adaptor(data, variant, seed, options)
            seconds = time.perf_counter() - started
            scores = {
                **evaluate(model, data, variant, swapped, seed, splits, names),
                "train_s": seconds,
            }
            runs[variant].append(scores)
            print(json.dumps({"variant": variant, "seed": seed, **scores}), flush=True)
    for variant, scores in runs.items():
        for key in scores[0]:
            figures = summarise([s[key] for s in scores])
            result[f"{variant}_{key}"] = round(figures["mean"], 4)
            result[f"{variant}_{key}_std"] = round(figures["std"], 4)
    for variant in [v for v in args.variants if v != "global" and "global" in args.variants]:
        for key in ("t2i_r@10", "laterality_accuracy", "cls_0.01_auroc"):
            result[f"{variant}_vs_global_{key}_ratio"] = round(
                result[f"{variant}_{key}"] / result[f"global_{key}"], 3
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
