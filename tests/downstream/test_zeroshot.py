"""Zero-shot classification: prompts, the library on cached shards, and ``POST /classify``.

The Adaptor is trained here in a few seconds on the shared 40-record set's train split. The
AUROC check scores all 40 records (27 of them seen in training, as image–report pairs, never
with labels): the held-out splits hold 4 and 9 records, too few to rank anything. It checks
the wiring (prompt sides, scale, both paths); a held-out test split needs a larger set than
a fast test can embed.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from adaptor.config import ZeroShotOptions
from adaptor.data.sources.chexpert import CHEXPERT_LABELS
from adaptor.data.synthetic import FINDINGS
from adaptor.downstream import zeroshot
from adaptor.downstream.prompts import (
    BUILTIN_PROMPTS,
    LabelPrompts,
    PromptError,
    load_prompts,
    prompts_for,
)
from adaptor.downstream.zeroshot import (
    ZeroShotClassifier,
    ZeroShotError,
    evaluate_zeroshot,
    run_zeroshot,
)
from adaptor.model import Adaptor, AdaptorMismatchError, clip_loss
from adaptor.retrieval import Searcher
from adaptor.retrieval.service import create_app
from adaptor.shards import ShardReader


@pytest.fixture(scope="module")
def trained_adaptor(
    tmp_path_factory: pytest.TempPathFactory, retrieval_index: tuple[Path, Path, Path]
) -> Path:
    """An Adaptor trained 100 full-batch CLIP steps on the shared shards' train split."""
    shards, adaptor_dir, _ = retrieval_index
    table = ShardReader(shards).load("train")
    torch.manual_seed(0)
    model = Adaptor(Adaptor.from_pretrained(adaptor_dir).config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(100):
        out = model(table.arrays["image"], table.arrays["text"], cross=False)
        loss = clip_loss(out.image, out.text, out.logit_scale, t2i_weight=0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("zeroshot") / "adaptor"
    model.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------ prompts


def test_builtin_prompts_cover_the_synthetic_and_chexpert_labels() -> None:
    found = prompts_for([*FINDINGS, *CHEXPERT_LABELS, "Effusion", "COVID-19"])
    assert found["Pleural Effusion"] == found["pleural_effusion"] == found["Effusion"]
    assert found["Support Devices"] == BUILTIN_PROMPTS["support_device"]
    for prompts in BUILTIN_PROMPTS.values():
        assert prompts.positive and prompts.negative
        assert not set(prompts.positive) & set(prompts.negative)


def test_prompts_file_gives_and_overrides_prompts(tmp_path: Path) -> None:
    path = tmp_path / "prompts.yaml"
    path.write_text(
        "pleural_effusion:\n"
        "  positive: [Large left effusion., Fluid in the pleural space.]\n"
        "  negative: No effusion.\n"
        "situs_inversus:\n"
        "  positive: [Dextrocardia.]\n"
        "  negative: [The heart is on the left.]\n"
    )
    user = load_prompts(path)
    assert user["pleural_effusion"] == LabelPrompts(
        ("Large left effusion.", "Fluid in the pleural space."), ("No effusion.",)
    )
    found = prompts_for(["Pleural Effusion", "situs_inversus", "pneumothorax"], user)
    assert found["Pleural Effusion"] is user["pleural_effusion"]  # the user's, by its key
    assert found["pneumothorax"] is BUILTIN_PROMPTS["pneumothorax"]
    assert list(found) == ["Pleural Effusion", "situs_inversus", "pneumothorax"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("- just\n- a list\n", "expected a non-empty mapping"),
        ("", "expected a non-empty mapping"),
        ("edema: [a, b]\n", "edema: expected {positive"),
        ("edema:\n  positive: [Edema.]\n", "edema.negative: missing"),
        ("edema:\n  positive: []\n  negative: [No edema.]\n", "edema.positive: missing"),
        ("edema:\n  positive: [Edema., 3]\n  negative: [x]\n", "edema.positive: expected a list"),
        ("edema:\n  positive: [' ']\n  negative: [x]\n", "edema.positive: expected a list"),
        ("edema:\n  positive: [a]\n  negative: [b]\n  neutral: [c]\n", "unknown key(s) neutral"),
        ("edema: {positive: [a\n", "not valid YAML"),
    ],
)
def test_bad_prompts_file_names_the_file_and_key(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PromptError, match="bad.yaml") as err:
        load_prompts(path)
    assert says in str(err.value)


def test_label_without_prompts_is_named_with_the_builtin_labels() -> None:
    with pytest.raises(PromptError) as err:
        prompts_for(["pneumothorax", "situs_inversus"])
    message = str(err.value)
    assert "'situs_inversus'" in message and "'pneumothorax'" not in message
    assert "built-in prompts exist for" in message and "cardiomegaly" in message


def test_errors_pickle_as_themselves() -> None:
    for err in (
        PromptError("no prompts for label(s) 'x'"),
        ZeroShotError("no records in split 'test'"),
        AdaptorMismatchError("trained for other encoders"),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)


def test_probability_is_the_softmax_over_the_two_sides() -> None:
    vectors = {"yes": [1.0, 0.0], "no": [0.0, 1.0]}
    classifier = ZeroShotClassifier(
        {"x": LabelPrompts(("yes",), ("no",))},
        lambda texts: torch.tensor([vectors[t] for t in texts]),
        torch.tensor(2.0),
    )
    images = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
    scale = torch.tensor(2.0).exp()
    expected = torch.softmax(scale * torch.stack([images[:, 0], images[:, 1]], dim=1), 1)[:, 0]
    assert torch.allclose(classifier.probabilities(images)[:, 0], expected)


# ------------------------------------------------------------------------------ library


def test_zeroshot_beats_chance_and_writes_its_tables(
    trained_adaptor: Path, retrieval_index: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    shards = retrieval_index[0]
    result = run_zeroshot(shards, trained_adaptor, tmp_path, ZeroShotOptions(split="all"))
    assert sorted(result.labels) == sorted(FINDINGS) and result.records == 40
    auroc = result.per_class["auroc"]
    print("zero-shot AUROC:", {k: round(v, 3) for k, v in auroc.items()})
    assert result.metrics["auroc_macro"] > 0.6
    assert sum(v > 0.5 for v in auroc.values()) >= 5
    # the uncertain pneumothorax label is masked, as the heads do
    assert sum(result.counts["pneumothorax"].values()) == 39

    saved = json.loads((tmp_path / "zeroshot.json").read_text())
    assert saved["metrics"]["auroc_macro"] == pytest.approx(result.metrics["auroc_macro"])
    table = (tmp_path / "zeroshot.md").read_text()
    assert "| pleural_effusion |" in table and "**macro**" in table
    assert "no frozen-encoder baseline" in table
    cell = result.to_cell()
    assert cell.fraction == 0.0 and cell.metrics == result.metrics


def test_adaptor_zeroshot_through_the_cli(
    trained_adaptor: Path, retrieval_index: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from adaptor.cli import app

    shards = retrieval_index[0]
    args = ["zeroshot", "--shards", str(shards), "--adaptor", str(trained_adaptor)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path), "--split", "all"])
    assert result.exit_code == 0, result.output
    assert "**macro**" in result.output and (tmp_path / "zeroshot.json").is_file()
    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x"), "--labels", "edema"])
    assert bad.exit_code == 2 and bad.output.startswith("error: "), bad.output


def test_zeroshot_labels_prompts_and_bad_requests(
    trained_adaptor: Path, retrieval_index: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    shards, untrained, _ = retrieval_index
    user = {"pleural_effusion": LabelPrompts(("Pleural effusion.",), ("No pleural effusion.",))}
    result = evaluate_zeroshot(
        shards, trained_adaptor, labels=["pleural_effusion", "nodule"], prompts=user, split="val"
    )
    assert result.labels == ["pleural_effusion", "nodule"] and result.records == 9
    assert result.prompts["pleural_effusion"]["positive"] == ["Pleural effusion."]

    with pytest.raises(ZeroShotError, match=r"\['edema'\] are not in the records"):
        evaluate_zeroshot(shards, trained_adaptor, labels=["edema"])
    with pytest.raises(ZeroShotError, match="no records in split 'holdout'"):
        evaluate_zeroshot(shards, trained_adaptor, split="holdout")

    config = Adaptor.from_pretrained(untrained).config
    config.encoders = {**config.encoders, "text": {**config.encoders["text"], "fingerprint": "x"}}
    Adaptor(config).save_pretrained(tmp_path / "other")
    with pytest.raises(AdaptorMismatchError, match="text encoder fingerprint"):
        run_zeroshot(shards, tmp_path / "other", tmp_path / "out")


def test_zeroshot_rerun_reuses_its_result_until_an_input_changes(
    trained_adaptor: Path,
    retrieval_index: tuple[Path, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shards, out, options = retrieval_index[0], tmp_path / "out", ZeroShotOptions(split="all")
    zeroshot._text_encoder.cache_clear()
    built, scored = [], []
    build, evaluate = zeroshot.build_text_encoder, zeroshot.evaluate_zeroshot
    monkeypatch.setattr(zeroshot, "build_text_encoder", lambda *a: built.append(a) or build(*a))
    monkeypatch.setattr(
        zeroshot, "evaluate_zeroshot", lambda *a, **k: scored.append(a) or evaluate(*a, **k)
    )
    first = run_zeroshot(shards, trained_adaptor, out, options)
    (out / "zeroshot.md").unlink()
    logged: list[str] = []
    again = run_zeroshot(shards, trained_adaptor, out, options, log=logged.append)
    assert again == first and len(scored) == 1 and "zero-shot: reusing" in logged[0]
    assert (out / "zeroshot.md").read_text() == first.markdown()  # a missing table is rewritten

    # other options, prompts or Adaptor weights: scored again, with the same text encoder
    run_zeroshot(shards, trained_adaptor, out, ZeroShotOptions(split="val"))
    user = {"nodule": LabelPrompts(("A nodule.",), ("No nodule.",))}
    run_zeroshot(shards, trained_adaptor, out, ZeroShotOptions(split="val"), prompts=user)
    model = Adaptor.from_pretrained(trained_adaptor)
    with torch.no_grad():
        model.logit_scale_raw.add_(1.0)
    model.save_pretrained(tmp_path / "changed")
    changed = run_zeroshot(shards, tmp_path / "changed", out, options)
    assert len(scored) == 4 and len(built) == 1
    assert changed.logit_scale == pytest.approx(first.logit_scale + 1.0)


# ------------------------------------------------------------------------------ service


@pytest.fixture(scope="module")
def client(service_searcher: Searcher) -> TestClient:
    with TestClient(create_app(service_searcher)) as client:
        yield client


def test_classify_endpoint(
    client: TestClient, service_searcher: Searcher, synthetic_dir: Path
) -> None:
    record = json.loads((synthetic_dir / "records.jsonl").read_text().splitlines()[3])
    image = synthetic_dir / record["image"]
    upload = {"file": ("q.png", image.read_bytes(), "image/png")}
    response = client.post(
        "/classify", files=upload, data={"labels": "pneumothorax, Pleural Effusion,nodule"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body["probabilities"]) == ["pneumothorax", "Pleural Effusion", "nodule"]
    assert all(0.0 <= p <= 1.0 for p in body["probabilities"].values()) and body["took_ms"] > 0

    # the same numbers as the library's classifier on the searcher's encoders
    encoder = service_searcher.encoder
    classifier = ZeroShotClassifier(
        prompts_for(["pneumothorax"]),
        lambda texts: torch.from_numpy(encoder.texts(texts)),
        encoder.adaptor.logit_scale,
    )
    direct = classifier.probabilities(torch.from_numpy(encoder.images([image])))[0, 0]
    assert body["probabilities"]["pneumothorax"] == pytest.approx(float(direct), abs=1e-5)

    prompts = {"situs_inversus": {"positive": ["Dextrocardia."], "negative": ["Normal heart."]}}
    response = client.post("/classify", files=upload, data={"prompts": json.dumps(prompts)})
    assert response.status_code == 200 and list(response.json()["probabilities"]) == [
        "situs_inversus"
    ]
    assert client.get("/stats").json()["batching"]["classify"]["items"] == 2


@pytest.mark.parametrize(
    ("data", "file", "status", "says"),
    [
        ({"labels": "pneumothorax,situs_inversus"}, None, 422, "no prompts for label(s)"),
        ({"labels": " , "}, None, 422, "no label names"),
        ({}, None, 422, "give labels (comma-separated) or prompts"),
        ({"labels": ",".join(f"l{i}" for i in range(33))}, None, 422, "at most 32"),
        ({"prompts": "{not json"}, None, 422, "not valid JSON"),
        ({"prompts": "[" * 20_000}, None, 422, "not valid JSON"),
        ({"prompts": '{"edema": {"positive": ["a"]}}'}, None, 422, "edema.negative: missing"),
        ({"labels": "edema"}, ("n.txt", b"plain text"), 415, "not a PNG, JPEG or DICOM"),
        ({"labels": "edema"}, ("x.png", b""), 422, "empty"),
        ({"labels": "edema"}, ("x.png", b"\x89PNG\r\n\x1a\n broken"), 422, "x.png"),
    ],
)
def test_classify_bad_requests(
    client: TestClient,
    synthetic_dir: Path,
    data: dict[str, str],
    file: tuple[str, bytes] | None,
    status: int,
    says: str,
) -> None:
    record = json.loads((synthetic_dir / "records.jsonl").read_text().splitlines()[0])
    file = file or ("q.png", (synthetic_dir / record["image"]).read_bytes())
    response = client.post("/classify", files={"file": file}, data=data)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    text = json.dumps(detail) if status == 422 else detail
    assert says in text
    if status == 422:
        assert isinstance(detail, list) and detail[0]["loc"][0] == "body"
