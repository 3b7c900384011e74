"""Encoder passes of a study's embedding against one `adaptor run`-style embed per pair.

A 2 × 2 encoder grid (two image encoders × two text encoders) over a paired corpus and an
image-only evaluation set. Baseline: what four independent runs do, one per pair, each
embedding the corpus and the evaluation set with both of its encoders (the text encoder
runs on the evaluation set's empty reports too). Ours: `adaptor study`'s embedding, each
image encoder once per dataset, each text encoder once on the corpus, the pairs joined
from those shards without running a model. Both in the same run, on the same records;
every encoder forward is counted (records through each encoder) and timed.

    python benchmarks/study_encoders.py --corpus 120 --evaluate 80

Prints one JSON line at the end: passes and seconds of each, and
`encoder_pass_ratio` / `time_ratio` = baseline ÷ ours (higher is better).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adaptor.config.study import StudyConfig  # noqa: E402
from adaptor.data.synthetic import generate_synthetic  # noqa: E402
from adaptor.embed import EmbedConfig, embed  # noqa: E402
from adaptor.encoders.base import ImageEncoder, TextEncoder  # noqa: E402
from adaptor.study.layout import StudyLayout  # noqa: E402
from adaptor.study.runner import embed_datasets  # noqa: E402

IMAGE_ENCODERS = ["efficientnet-lite0", "timm:resnet18@random"]
TEXT_ENCODERS = ["all-minilm-l6-v2", "open_clip:RN50@random"]
PASSES: Counter[str] = Counter()


def _count(cls: type, role: str) -> None:
    """Count the records every ``cls.encode`` call of ``role`` runs over."""
    original = cls.encode

    def encode(self, batch, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if hasattr(self, "info"):  # not the probe an encoder runs while it is built
            n = len(batch) if role == "image" else len(batch.truncated)
            PASSES[f"{role}:{self.info.name}"] += n
        return original(self, batch, *args, **kwargs)

    cls.encode = encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=int, default=120, help="paired corpus records")
    parser.add_argument("--evaluate", type=int, default=80, help="image-only evaluation records")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    _count(ImageEncoder, "image")
    _count(TextEncoder, "text")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus, shifted = root / "raw" / "corpus", root / "raw" / "shifted"
        generate_synthetic(corpus, n=args.corpus, seed=0, size=224, progress=False)
        generate_synthetic(
            shifted, n=args.evaluate, seed=1, size=224, progress=False,
            acquisition="shifted", reports=False,
        )  # fmt: skip
        sources = {"corpus": f"synthetic:{corpus}", "shifted": f"synthetic:{shifted}"}
        common = dict(batch_size=args.batch_size, loader_workers=0, progress=False)

        PASSES.clear()
        start = time.perf_counter()
        for image in IMAGE_ENCODERS:
            for text in TEXT_ENCODERS:
                for name, source in sources.items():
                    embed(
                        EmbedConfig(
                            source=source,
                            out=root / "baseline" / f"{image}-{text}-{name}".replace(":", "_"),
                            image_encoder=image,
                            text_encoder=text,
                            **common,
                        ),
                        log=lambda _: None,
                    )
        baseline_s, baseline = time.perf_counter() - start, dict(PASSES)

        PASSES.clear()
        cfg = StudyConfig.model_validate(
            {
                "evaluate": {"corpus": {"source": "corpus"}, "shifted": {}},
                "encoders": {"image": IMAGE_ENCODERS, "text": TEXT_ENCODERS},
                "embed": {"batch_size": args.batch_size, "loader_workers": 0},
            }
        )
        start = time.perf_counter()
        embed_datasets(
            cfg, StudyLayout(root / "study"), sources, progress=False, log=lambda _: None
        )
        ours_s, ours = time.perf_counter() - start, dict(PASSES)

    records = {"corpus": args.corpus, "shifted": args.evaluate}
    print(f"baseline (4 runs, one per pair): {baseline}, {baseline_s:.1f} s")
    print(f"study (each encoder once per dataset): {ours}, {ours_s:.1f} s")
    once = all(ours.get(f"image:{i}") == sum(records.values()) for i in IMAGE_ENCODERS) and all(
        ours.get(f"text:{t}") == args.corpus for t in TEXT_ENCODERS
    )
    print(
        json.dumps(
            {
                "records": records,
                "baseline_passes": baseline,
                "study_passes": ours,
                "baseline_seconds": round(baseline_s, 1),
                "study_seconds": round(ours_s, 1),
                "each_encoder_once_per_dataset": once,
                "encoder_pass_ratio": round(sum(baseline.values()) / sum(ours.values()), 3),
                "time_ratio": round(baseline_s / ours_s, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
