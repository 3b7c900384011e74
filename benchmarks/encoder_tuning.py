"""Parameter-efficient encoder tuning against full fine-tuning and the frozen encoder, one run.

(a) Cost of a training step, per encoder × method: trainable parameters (count and % of
    the encoder), peak memory of the first training step (weights and buffers held + the
    peak of tensor memory allocated during the step: CUDA max-allocated on a GPU, a
    TorchDispatchMode allocation tracker on CPU — the same for every method, see
    adaptor/downstream/step_memory.py), each method in a fresh subprocess; and training
    samples/s (forward + backward + AdamW step), every method of an encoder in one
    subprocess, one timed step of each in turn per round (batch ÷ the median step).
    Encoders: a randomly initialised ViT-S/16 (timm), the default text encoder (MiniLM,
    a BERT) and the default image encoder (EfficientNet-Lite0, where a method applies).
    Baselines: `full` fine-tuning and `frozen`.
(b) Downstream: `finetune_tuned` (what `adaptor finetune tune` runs, one Ray task per cell)
    on a synthetic set, every method on the text encoder and every applicable method on
    the image encoder, from 1 / 10 / 100 % label splits; test macro AUROC.

    python benchmarks/encoder_tuning.py --n 400 --rounds 5

Prints one JSON line at the end; `…_ratio` figures are ours ÷ baseline for throughput
and baseline ÷ ours for memory (`…_memory_saving_ratio`), so higher is better.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

VIT = "timm:vit_small_patch16_224@random"
TEXT = "all-minilm-l6-v2"
CNN = "efficientnet-lite0"
# (method, options, gradient checkpointing)
TRANSFORMER_METHODS = [
    ("frozen", {}, False),
    ("lora", {}, False),
    ("adapter", {}, False),
    ("layernorm", {}, False),
    ("apla", {}, False),
    ("apla", {"columns": 0.25}, False),
    ("full", {}, False),
]
CNN_METHODS = [(m, {}, False) for m in ("frozen", "lora", "adapter", "layernorm", "apla", "full")]
N_LABELS = 7


# ---------------------------------------------------------------- (a) one step, in subprocesses


def build_step(case: dict, method: str, options: dict, checkpointing: bool) -> tuple:
    """The encoder of ``case`` tuned by ``method``, a head, AdamW, and a training-step closure.

    Returns ``(step, modules, report)``, or ``(None, None, why)`` where the method does not
    apply to the encoder.
    """
    from adaptor.config.downstream import ENCODER_LR
    from adaptor.encoders import build_image_encoder, build_text_encoder
    from adaptor.heads.classification import build_head, masked_bce_loss
    from adaptor.peft import TuningError, apply_tuning
    from adaptor.peft.checkpointing import enable_gradient_checkpointing
    from adaptor.peft.targets import unused_parameters

    device = _device()
    torch.manual_seed(0)
    side, batch = case["side"], case["batch"]
    build = build_image_encoder if side == "image" else build_text_encoder
    encoder = build(case["encoder"], device)
    if side == "image":
        h, w = encoder.preprocess.size
        inputs = torch.randn(batch, 3, h, w, device=device)

        def forward(x: torch.Tensor) -> torch.Tensor:
            return encoder._encode(encoder._prepare(x), False).global_.float()

        probe_input = inputs[:1]
    else:
        reports = (case["reports"] * batch)[:batch]
        tokens = encoder.make_tokenizer()(reports)
        inputs = {k: v.to(device) for k, v in tokens.tensors.items()}

        def forward(x: dict) -> torch.Tensor:
            return encoder._encode(x, False).global_.float()

        probe_input = {k: v[:1] for k, v in inputs.items()}
    module = encoder.module
    unused = unused_parameters(module, lambda: forward(probe_input))
    if checkpointing:
        enable_gradient_checkpointing(module)
    try:
        report = apply_tuning(module, method, exclude=unused, **options)
    except TuningError as err:
        return None, None, str(err)
    module.train()
    for m in module.modules():  # batch-norm statistics stay frozen, as in tune.py
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    head = build_head("linear", encoder.info.dim, N_LABELS).to(device)
    targets = (torch.rand(batch, N_LABELS, device=device) < 0.3).float()
    valid = torch.ones_like(targets, dtype=torch.bool)
    trainable = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": list(head.parameters()), "lr": 1e-3}]
    groups += [{"params": trainable, "lr": ENCODER_LR[method]}] if trainable else []
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-4)

    def step() -> None:
        with torch.set_grad_enabled(bool(trainable)):
            feats = forward(inputs)
        loss = masked_bce_loss(head(feats), targets, valid)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, [module, head], report


def memory_case(case: dict) -> dict:
    """Trainable parameters and the peak memory of the first training step of one method
    (runs in a fresh process: a clean allocator, nothing shared with other methods)."""
    from adaptor.downstream.step_memory import measure_step

    torch.set_num_threads(case["threads"])
    method, options, checkpointing = case["method"]
    step, modules, report = build_step(case, method, options, checkpointing)
    label = {"encoder": case["encoder"], "method": _name(method, options, checkpointing)}
    if step is None:
        return {**label, "applies": False, "why": report}
    _, peak_mb = measure_step(step, modules, _device())
    return {
        **label,
        "applies": True,
        "device": str(_device()),
        "trainable": report.trainable_parameters,
        "encoder_parameters": report.encoder_parameters,
        "trainable_percent": round(report.trainable_percent, 3),
        "peak_memory_mb": round(peak_mb, 1),
    }


def throughput_case(case: dict) -> dict:
    """Training samples/s of every method of one encoder, in one process: after a warm-up
    step each, ``rounds`` rounds time one step of every method in turn, so a change in the
    machine's load touches all methods alike; samples/s = batch ÷ the median step time."""
    torch.set_num_threads(case["threads"])
    steps = {}
    for method, options, checkpointing in case["methods"]:
        step, _, _ = build_step(case, method, options, checkpointing)
        if step is not None:
            step()  # warm-up (and optimizer state), untimed
            steps[_name(method, options, checkpointing)] = step
    times: dict[str, list[float]] = {name: [] for name in steps}
    device = _device()
    for _ in range(case["rounds"]):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: round(case["batch"] / statistics.median(ts), 2) for name, ts in times.items()}


def _name(method: str, options: dict, checkpointing: bool) -> str:
    opts = ",".join(f"{k}={v}" for k, v in options.items())
    return method + (f"[{opts}]" if opts else "") + ("+ckpt" if checkpointing else "")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(kind: str, case: dict) -> dict:
    """``memory_case`` or ``throughput_case`` in a fresh Python process."""
    out = subprocess.run(
        [sys.executable, __file__, f"--{kind}-case", json.dumps(case)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"{kind} case {case['encoder']} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------- (b) downstream


def downstream(
    n: int,
    epochs: int,
    sides: list[str],
    image_size: int | None,
    tmp: Path,
    log: Callable[[str], None],
) -> list[dict]:
    """Test macro AUROC of every method at 1 / 10 / 100 % labels on a synthetic set."""
    from adaptor.data.splits import make_label_splits
    from adaptor.data.synthetic import generate_synthetic
    from adaptor.downstream.tuning import TuneConfig, finetune_tuned
    from adaptor.embed import EmbedConfig, embed
    from adaptor.peft import METHODS
    from adaptor.shards import ShardReader

    raw, shards = tmp / "raw", tmp / "shards"
    generate_synthetic(raw, n=n, seed=0, size=256, progress=False)
    embed(EmbedConfig(source=f"synthetic:{raw}", out=shards, shard_size=250, progress=False))
    splits = make_label_splits(ShardReader(shards).load().meta, fractions=(0.01, 0.1, 1.0))
    rows = []
    applicable = {"text": list(METHODS), "image": ["frozen", "lora", "layernorm", "full"]}
    for side in sides:
        methods = applicable[side]
        cfg = TuneConfig(
            shards=str(shards), out=str(tmp / f"res-{side}"), methods=methods, encoder=side,
            fractions=[0.01, 0.1, 1.0], seeds=[0], epochs=epochs, batch_size=16,
            image_size=image_size, heads=["linear"],
        )  # fmt: skip
        started = time.perf_counter()
        cells = finetune_tuned(cfg, splits, progress=False, log=lambda _: None)
        log(f"downstream {side}: {len(cells)} cells in {time.perf_counter() - started:.0f} s")
        rows += [
            {
                "encoder": side,
                "method": c.method,
                "fraction": c.fraction,
                "auroc_macro": c.metrics["auroc_macro"],
                "trainable_percent": c.extra["trainable_percent"],
                "samples_per_s": c.extra["samples_per_s"],
                "peak_memory_mb": c.extra["peak_memory_mb"],
                "train_records": c.extra["train_records"],
            }
            for c in cells
        ]
    return rows


# ---------------------------------------------------------------- report


def _change(ours: float, base: float) -> float:
    return round(100.0 * (ours - base) / base, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400, help="synthetic records for (b); 0 skips it")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per downstream cell")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per method")
    parser.add_argument("--image-batch", type=int, default=8)
    parser.add_argument("--text-batch", type=int, default=16)
    parser.add_argument("--vit", default=VIT, help="the ViT of part (a)")
    parser.add_argument("--image-size", type=int, default=None, help="(b): tuned input size")
    parser.add_argument("--sides", default="text,image", help="(b): encoders to tune")
    # internal: one case, in a subprocess
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    parser.add_argument("--throughput-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        print(json.dumps(memory_case(json.loads(args.memory_case))))
        return
    if args.throughput_case:
        print(json.dumps(throughput_case(json.loads(args.throughput_case))))
        return

    from adaptor.data.synthetic import generate_synthetic

    threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        records = generate_synthetic(Path(tmp) / "reports", n=16, seed=1, size=224, progress=False)
        reports = [r.report for r in records]
    cases = [
        (args.vit, "image", args.image_batch, [*TRANSFORMER_METHODS, ("full", {}, True)]),
        (TEXT, "text", args.text_batch, TRANSFORMER_METHODS),
        (CNN, "image", args.image_batch, CNN_METHODS),
    ]
    steps = []
    for encoder, side, batch, methods in cases:
        base = {"encoder": encoder, "side": side, "batch": batch, "threads": threads,
                "reports": reports}  # fmt: skip
        print(f"\n(a) {encoder}, batch {batch}, {threads} threads")
        rows = [run_case("memory", {**base, "method": m}) for m in methods]
        speed = run_case("throughput", {**base, "methods": methods, "rounds": args.rounds})
        print(f"  {'method':<24}{'trainable':>12}{'%':>9}{'peak MB':>10}{'samples/s':>11}")
        for row in rows:
            steps.append(row)
            if not row["applies"]:
                print(f"  {row['method']:<24} does not apply: {row['why']}")
                continue
            row["samples_per_s"] = speed[row["method"]]
            print(
                f"  {row['method']:<24}{row['trainable']:>12,}{row['trainable_percent']:>9.3f}"
                f"{row['peak_memory_mb']:>10.0f}{row['samples_per_s']:>11.2f}"
            )

    figures: dict = {"benchmark": "peft", "threads": threads, "device": steps[0].get("device")}
    by = {(r["encoder"], r["method"]): r for r in steps if r["applies"]}
    print(
        "\nAPLA against LoRA and full fine-tuning (seed paper: -40.1 % memory, +25.2 % throughput)"
    )
    for encoder, tag in ((args.vit, "vit"), (TEXT, "text")):
        for variant, vtag in (("apla", "apla"), ("apla[columns=0.25]", "apla25")):
            for base in ("lora", "full"):
                ours, ref = by[(encoder, variant)], by[(encoder, base)]
                mem, sps = (
                    _change(ours["peak_memory_mb"], ref["peak_memory_mb"]),
                    _change(ours["samples_per_s"], ref["samples_per_s"]),
                )
                print(
                    f"  {tag:<5}{variant:<20} vs {base:<5}: memory {mem:+.1f} %, throughput {sps:+.1f} %"
                )
                figures[f"{tag}_{vtag}_vs_{base}_memory_change_pct"] = mem
                figures[f"{tag}_{vtag}_vs_{base}_throughput_change_pct"] = sps
                figures[f"{tag}_{vtag}_vs_{base}_memory_saving_ratio"] = round(
                    ref["peak_memory_mb"] / ours["peak_memory_mb"], 3
                )
                figures[f"{tag}_{vtag}_vs_{base}_throughput_ratio"] = round(
                    ours["samples_per_s"] / ref["samples_per_s"], 3
                )
    full, ckpt = by[(args.vit, "full")], by[(args.vit, "full+ckpt")]
    figures["vit_checkpointing_memory_saving_ratio"] = round(
        full["peak_memory_mb"] / ckpt["peak_memory_mb"], 3
    )
    figures["vit_checkpointing_throughput_ratio"] = round(
        ckpt["samples_per_s"] / full["samples_per_s"], 3
    )
    figures["steps"] = [
        {k: r[k] for k in ("encoder", "method", "trainable", "trainable_percent", "peak_memory_mb",
                           "samples_per_s")}
        for r in steps if r["applies"]
    ]  # fmt: skip

    if args.n:
        with tempfile.TemporaryDirectory() as tmp:
            rows = downstream(
                args.n, args.epochs, args.sides.split(","), args.image_size, Path(tmp), print
            )
        print(f"\n(b) downstream test macro AUROC, synthetic n={args.n}, {args.epochs} epochs")
        fractions = sorted({r["fraction"] for r in rows})
        print(f"  {'method':<28}" + "".join(f"{f * 100:>9g} %" for f in fractions))
        for method in dict.fromkeys(r["method"] for r in rows):
            cells = {r["fraction"]: r["auroc_macro"] for r in rows if r["method"] == method}
            print(
                f"  {method:<28}"
                + "".join(
                    f"{cells[f]:>11.3f}" if cells.get(f) is not None else f"{'n/a':>11}"
                    for f in fractions
                )
            )
        figures["downstream"] = rows
    figures["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
