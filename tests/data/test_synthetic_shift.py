"""The shifted, image-only synthetic set for transfer studies (issue #17 item 5).

Another acquisition (``--acquisition shifted``, or an :class:`Acquisition` of one's own)
changes the pixels and the prevalence, never what a label or a mask means; ``--no-reports``
leaves the reports out and the ``synthetic:`` source then says it has none, so ``adaptor
embed`` keeps the records with its defaults. The frozen encoder's linear probe, trained
on the standard set, drops on the shifted one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from adaptor.cli import app
from adaptor.config import RunConfig, SynthOptions
from adaptor.config.synth import ABNORMAL_SHARE, ACQUISITIONS, Acquisition
from adaptor.data import synthetic
from adaptor.data.sources import open_source
from adaptor.data.sources.base import has_reports
from adaptor.data.synthetic import FINDINGS, REGION_FINDINGS, generate_synthetic
from adaptor.shards import Manifest

runner = CliRunner()
SHIFTED = ACQUISITIONS["shifted"]
# records.jsonl and every decoded image and mask of generate_synthetic(out, 6, seed=0,
# size=224) as written before acquisitions existed: the default must not move
DEFAULT_DIGEST = "92994f53da907c03d3e520375c52fe00f7c72638f26f81f3f3007e2168b90149"


def _digest(root: Path) -> str:
    """sha256 of records.jsonl and the decoded pixels of every PNG (not the PNG bytes, which
    depend on the zlib build)."""
    h = hashlib.sha256((root / "records.jsonl").read_bytes())
    for path in sorted(root.rglob("*.png")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(np.asarray(Image.open(path)).tobytes())
    return h.hexdigest()


def _pixels(records: list) -> np.ndarray:
    return np.stack([np.asarray(Image.open(r.image), np.float32) for r in records])


def _high_frequency(images: np.ndarray) -> float:
    """Mean absolute Laplacian: fine detail plus pixel noise."""
    lap = 4 * images[:, 1:-1, 1:-1] - images[:, :-2, 1:-1] - images[:, 2:, 1:-1]
    lap -= images[:, 1:-1, :-2] + images[:, 1:-1, 2:]
    return float(np.abs(lap).mean())


# ------------------------------------------------------------------ options


def test_options_default_to_the_standard_set_with_reports() -> None:
    options = SynthOptions()
    assert (options.acquisition, options.reports) == ("standard", True)
    assert set(ACQUISITIONS) == {"standard", "shifted"}
    assert ACQUISITIONS["standard"] == Acquisition() and ACQUISITIONS["standard"].is_standard
    assert not SHIFTED.is_standard
    assert RunConfig().synth == options
    assert abs(1 - synthetic._N_FINDINGS_P[0] - ABNORMAL_SHARE) < 1e-12
    shifted = SynthOptions(acquisition="shifted", reports=False)
    assert shifted.model_dump() == {
        "n": 2000,
        "seed": 0,
        "size": 256,
        "acquisition": "shifted",
        "reports": False,
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"contrast": 0}, "greater than 0"),
        ({"gamma": -1}, "greater than 0"),
        ({"noise": -0.1}, "greater than or equal to 0"),
        ({"blur": 9}, "less than or equal to 8"),
        ({"resolution": 0}, "greater than or equal to 0.125"),
        ({"resolution": 1.5}, "less than or equal to 1"),
        ({"prevalence": 2}, "less than or equal to 1.53"),
        ({"sharpness": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_acquisition_values_are_refused(values: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Acquisition(**values)


def test_unknown_acquisition_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="'standard' or 'shifted'"):
        SynthOptions(acquisition="hospital-b")
    with pytest.raises(ValueError, match=r"standard, shifted .*got 'hospital-b'"):
        generate_synthetic(tmp_path, 1, acquisition="hospital-b", progress=False)
    assert not (tmp_path / "records.jsonl").exists()


def test_cli_refuses_a_bad_acquisition_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = runner.invoke(app, ["synth", "--out", str(out), "--acquisition", "other"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line == "error: --acquisition: must be 'standard' or 'shifted', got 'other'"
    assert not out.exists()


def test_cli_writes_the_shifted_image_only_set(tmp_path: Path) -> None:
    args = ["--n", "3", "--size", "224", "--acquisition", "shifted", "--no-reports"]
    result = runner.invoke(app, ["synth", "--out", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    by_hand = generate_synthetic(
        tmp_path / "py", 3, seed=0, size=224, progress=False, acquisition="shifted", reports=False
    )
    assert [r.image.read_bytes() for r in by_hand] == [
        (tmp_path / "images" / r.image.name).read_bytes() for r in by_hand
    ]
    assert not has_reports(open_source(f"synthetic:{tmp_path}"))


# ------------------------------------------------------------------ the default is unchanged


def test_default_output_is_unchanged(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "a", 6, seed=0, size=224, progress=False)
    assert _digest(tmp_path / "a") == DEFAULT_DIGEST
    generate_synthetic(
        tmp_path / "b", 6, seed=0, size=224, progress=False, acquisition=Acquisition(), reports=True
    )
    assert _digest(tmp_path / "b") == DEFAULT_DIGEST
    assert "metadata" not in (tmp_path / "a" / "records.jsonl").read_text()


# ------------------------------------------------------------------ what the shift changes


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list]:
    """The same 24 studies (seed 3) acquired the standard way and by the shifted scanner at
    the standard prevalence, so only the acquisition differs."""
    root = tmp_path_factory.mktemp("pair")
    same_population = SHIFTED.model_copy(update={"prevalence": 1.0})
    standard = generate_synthetic(root / "standard", 24, seed=3, size=256, progress=False)
    shifted = generate_synthetic(
        root / "shifted", 24, seed=3, size=256, progress=False, acquisition=same_population
    )
    return standard, shifted


def test_shifted_acquisition_keeps_labels_masks_and_splits(pair: tuple[list, list]) -> None:
    standard, shifted = pair
    for a, b in zip(standard, shifted, strict=True):
        assert (a.id, a.labels, a.split, a.patient_id, a.report) == (
            b.id,
            b.labels,
            b.split,
            b.patient_id,
            b.report,
        )
        assert (a.mask is None) == (b.mask is None)
        if a.mask is not None:
            assert Path(a.mask).read_bytes() == Path(b.mask).read_bytes()
        assert a.image.read_bytes() != b.image.read_bytes()
        assert b.metadata == {"acquisition": "custom"} and a.metadata == {}
        with Image.open(b.image) as im:
            assert im.mode == "L" and im.size == (256, 256)


def test_shifted_images_are_flatter_softer_and_noisier(pair: tuple[list, list]) -> None:
    standard, shifted = _pixels(pair[0]), _pixels(pair[1])
    # a flatter display curve: less spread of grey levels in each image
    spread = shifted.std(axis=(1, 2)) / standard.std(axis=(1, 2))
    assert spread.max() < 0.9, spread
    # softer: pixel-scale detail over the lungs falls by far more than the contrast does
    lungs = (slice(None), slice(90, 150), slice(60, 100))
    detail = _high_frequency(shifted[lungs]) / _high_frequency(standard[lungs])
    assert detail < 0.7 * spread.mean(), (detail, spread.mean())
    # noisier at the detector's pitch (2 px: half resolution) in a flat region (the abdomen)
    flat = (slice(None), slice(100, 120), slice(50, 78))  # 2x2-binned pixels
    binned = [
        x.reshape(len(x), 128, 2, 128, 2).mean(axis=(2, 4))[flat] for x in (standard, shifted)
    ]
    ratio = _high_frequency(binned[1]) / _high_frequency(binned[0])
    assert ratio > 1.5, ratio


@pytest.mark.parametrize(
    ("knob", "value"),
    [("contrast", 0.5), ("gamma", 1.6), ("brightness", 0.1), ("noise", 0.05), ("blur", 2.0),
     ("resolution", 0.5)],
)  # fmt: skip
def test_each_knob_acts_alone(knob: str, value: float) -> None:
    """One value changes the image in its own way and leaves labels and masks alone."""
    anatomy = synthetic._place_study(
        synthetic._sample_habitus(np.random.default_rng(0)), np.random.default_rng(1)
    )
    finding = [synthetic._Finding("nodule", side="right", zone="upper", size=14)]

    def render(acq: Acquisition) -> tuple[np.ndarray, np.ndarray]:
        image, mask = synthetic._render(
            anatomy, finding, np.random.default_rng(2), 256, acq, np.random.default_rng(3)
        )
        return image.astype(np.float32), mask

    base, base_mask = render(Acquisition())
    image, mask = render(Acquisition(**{knob: value}))
    assert np.array_equal(mask, base_mask)
    if knob == "contrast":
        assert image.std() < 0.7 * base.std()
    elif knob == "gamma":
        assert image.mean() < base.mean() - 10
    elif knob == "brightness":
        assert abs(image.mean() - base.mean() - 0.1 * 255) < 8  # clipped at the ends
    elif knob == "noise":
        assert _high_frequency(image[None]) > 2 * _high_frequency(base[None])
    else:
        assert _high_frequency(image[None]) < 0.6 * _high_frequency(base[None])
        assert abs(image.mean() - base.mean()) < 2  # sharpness, not exposure


@pytest.mark.parametrize(
    ("finding", "direction"),
    [
        (synthetic._Finding("opacity", side="right", zone="lower", size=0.09), 1),
        (synthetic._Finding("pleural_effusion", side="left", size=0.1), 1),
        (synthetic._Finding("pneumothorax", side="left", size=0.22), -1),
        (synthetic._Finding("nodule", side="right", zone="upper", size=14), 1),
    ],
)
def test_findings_stay_visible_in_their_mask_under_the_shift(finding, direction) -> None:
    anatomy = synthetic._place_study(
        synthetic._sample_habitus(np.random.default_rng(0)), np.random.default_rng(1)
    )

    def render(findings: list) -> tuple[np.ndarray, np.ndarray]:
        return synthetic._render(
            anatomy, findings, np.random.default_rng(2), 256, SHIFTED, np.random.default_rng(5)
        )

    with_it, mask = render([finding])
    without, empty = render([])
    assert mask.sum() > 30 and not empty.any()
    diff = with_it.astype(float) - without.astype(float)
    assert direction * diff[mask].mean() > 8
    assert np.abs(diff[~mask]).mean() < 2


def test_shifted_prevalence_has_more_findings_of_the_same_kinds() -> None:
    def any_finding(prevalence: float) -> tuple[float, set[str]]:
        draws = [
            synthetic._sample_findings(np.random.default_rng([9, i]), prevalence)
            for i in range(3000)
        ]
        return np.mean([bool(d) for d in draws]), {f.name for d in draws for f in d}

    standard, kinds = any_finding(1.0)
    shifted, shifted_kinds = any_finding(SHIFTED.prevalence)
    assert abs(standard - ABNORMAL_SHARE) < 0.03
    assert abs(shifted - ABNORMAL_SHARE * SHIFTED.prevalence) < 0.03
    assert kinds == shifted_kinds == set(FINDINGS) - {"no_finding"}
    assert synthetic._n_findings_p(1.0) is synthetic._N_FINDINGS_P
    assert abs(sum(synthetic._n_findings_p(1 / ABNORMAL_SHARE)) - 1) < 1e-12


def test_the_shifted_set_has_the_same_labels_and_masks_rules(tmp_path: Path) -> None:
    records = generate_synthetic(
        tmp_path, 40, seed=1, size=224, progress=False, acquisition="shifted"
    )
    assert all(r.metadata == {"acquisition": "shifted"} for r in records)
    for r in records:
        assert set(r.labels) == set(FINDINGS)
        regional = any(r.labels[f] != 0 for f in REGION_FINDINGS)
        assert (r.mask is not None) == regional, r.id
        if r.mask is not None:
            assert np.asarray(Image.open(r.mask)).any()
    assert np.mean([r.labels["no_finding"] == 1 for r in records]) < 0.3


# ------------------------------------------------------------------ image-only


def test_image_only_set_is_the_same_set_without_reports(tmp_path: Path) -> None:
    with_reports = generate_synthetic(tmp_path / "a", 8, seed=2, size=224, progress=False)
    image_only = generate_synthetic(
        tmp_path / "b", 8, seed=2, size=224, progress=False, reports=False
    )
    for a, b in zip(with_reports, image_only, strict=True):
        assert a.report and b.report == ""
        assert a.image.read_bytes() == b.image.read_bytes()
        assert (a.labels, a.split, a.patient_id) == (b.labels, b.split, b.patient_id)
    assert has_reports(open_source(f"synthetic:{tmp_path / 'a'}"))
    source = open_source(f"synthetic:{tmp_path / 'b'}")
    assert not has_reports(source)
    assert all(item.report == "" for item in source.items())


@pytest.mark.slow
def test_image_only_shifted_set_embeds_with_the_default_options(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "shards"
    generate_synthetic(
        raw, 6, seed=1, size=224, progress=False, acquisition="shifted", reports=False
    )
    result = runner.invoke(app, ["embed", "--source", f"synthetic:{raw}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(out)
    assert manifest.count == 6 and manifest.skipped == []


# ------------------------------------------------------------------ the frozen baseline drops


def _probe_aurocs(root: Path, n_train: int, n_shifted: int, size: int = 224) -> dict[str, float]:
    """Macro AUROC of a linear probe on frozen EfficientNet-Lite0 features, trained on the
    standard set's train split (seed 0) and scored on its other splits and on a shifted set
    of other patients (seed 1)."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from adaptor.embed.pixels import load_pixels
    from adaptor.encoders import DEFAULT_IMAGE_ENCODER, build_image_encoder

    encoder = build_image_encoder(DEFAULT_IMAGE_ENCODER)

    def features(records: list) -> np.ndarray:
        out = []
        for i in range(0, len(records), 32):
            batch = records[i : i + 32]
            pixels = torch.stack([encoder.preprocess(load_pixels(r.id, r.image)) for r in batch])
            out.append(encoder.encode(pixels).global_.numpy())
        return np.concatenate(out)

    def targets(records: list) -> np.ndarray:
        return np.array([[r.labels[f] != 0 for f in FINDINGS] for r in records], int)

    standard = generate_synthetic(root / "standard", n_train, seed=0, size=size, progress=False)
    shifted = generate_synthetic(
        root / "shifted", n_shifted, seed=1, size=size, progress=False, acquisition="shifted"
    )
    x, y = features(standard), targets(standard)
    train = np.array([r.split == "train" for r in standard])
    scaler = StandardScaler().fit(x[train])
    probes = [
        LogisticRegression(C=0.05, max_iter=2000).fit(scaler.transform(x[train]), y[train, j])
        for j in range(len(FINDINGS))
    ]

    def macro_auroc(x_eval: np.ndarray, y_eval: np.ndarray) -> float:
        scores = scaler.transform(x_eval)
        return float(
            np.mean(
                [
                    roc_auc_score(y_eval[:, j], probe.decision_function(scores))
                    for j, probe in enumerate(probes)
                    if 0 < y_eval[:, j].sum() < len(y_eval)
                ]
            )
        )

    return {
        "standard": macro_auroc(x[~train], y[~train]),
        "shifted": macro_auroc(features(shifted), targets(shifted)),
    }


@pytest.mark.slow
def test_the_frozen_baseline_drops_under_the_shift(tmp_path: Path) -> None:
    auroc = _probe_aurocs(tmp_path, n_train=160, n_shifted=80)
    print(f"frozen linear probe macro AUROC: {auroc}")
    assert auroc["standard"] > 0.8, auroc
    assert auroc["shifted"] < auroc["standard"] - 0.1, auroc
