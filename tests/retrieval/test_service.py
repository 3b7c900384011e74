"""The HTTP service: every endpoint, bounded and validated input, API key, micro-batching.

Through FastAPI's TestClient, and (marked slow) through a real ``adaptor serve`` process
on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import numpy as np
import pydicom.data
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from adaptor.retrieval import Searcher
from adaptor.retrieval.service import ServiceLimits, create_app

LIMITS = ServiceLimits(
    max_k=20, max_text_chars=500, max_upload_bytes=256 * 1024, max_image_side=1024
)


@pytest.fixture(scope="module")
def index_dir(retrieval_index: tuple[Path, Path, Path]) -> Path:
    return retrieval_index[2]


@pytest.fixture(scope="module")
def searcher(service_searcher: Searcher) -> Searcher:
    return service_searcher


@pytest.fixture()
def client(searcher: Searcher) -> Iterator[TestClient]:
    with TestClient(create_app(searcher, LIMITS)) as client:
        yield client


def _record(synthetic_dir: Path, i: int = 0) -> dict:
    return json.loads((synthetic_dir / "records.jsonl").read_text().splitlines()[i])


def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _corrupt_dicom() -> bytes:
    """A real DICOM header whose pixel data is cut short."""
    data = Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes()
    return data[: len(data) - 20_000]


def test_every_endpoint(client: TestClient, searcher: Searcher, synthetic_dir: Path) -> None:
    assert client.get("/health").json() == {"status": "ok", "records": 40}

    response = client.post("/search/text", json={"text": "large left pleural effusion", "k": 5})
    assert response.status_code == 200
    body = response.json()
    direct = searcher.search_text(["large left pleural effusion"], k=5)[0]
    assert [h["id"] for h in body["hits"]] == [h.id for h in direct]
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True) and body["target"] == "image"
    assert {"report", "labels", "split", "image", "has_thumbnail"} <= set(
        body["hits"][0]["metadata"]
    )

    record = _record(synthetic_dir, 2)
    png = (synthetic_dir / record["image"]).read_bytes()
    response = client.post("/search/image?k=3", files={"file": ("q.png", png, "image/png")})
    assert response.status_code == 200
    assert response.json()["hits"][0]["id"] == record["id"]  # the indexed image finds itself
    response = client.post(
        "/search/image", params={"k": 4, "target": "report"}, files={"file": ("q.png", png)}
    )
    assert response.status_code == 200 and response.json()["target"] == "report"
    assert len(response.json()["hits"]) == 4

    response = client.get(f"/records/{record['id']}")
    assert response.status_code == 200
    assert response.json()["report"] == record["report"]
    assert response.json()["thumbnail_url"] == f"/thumbnails/{record['id']}"
    thumb = client.get(response.json()["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 160

    stats = client.get("/stats").json()
    assert stats["records"] == 40 and stats["limits"]["max_k"] == 20
    assert stats["batching"]["text"]["items"] == 1 and stats["batching"]["image"]["items"] == 2
    assert stats["encoders"]["image"]["name"] == "efficientnet-lite0"

    schema = client.get("/openapi.json").json()
    assert {"/search/text", "/search/image", "/records/{record_id}", "/health", "/stats"} <= set(
        schema["paths"]
    )
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for needle in (
        'id="text-form"',
        'id="file"',
        '"/search/text"',
        "/search/image?",
        "/thumbnails/",
    ):
        assert needle in page.text


BAD_REQUESTS = [
    (
        "k = 0",
        "post",
        "/search/text",
        {"json": {"text": "effusion", "k": 0}},
        422,
        "greater than or equal to 1",
    ),
    (
        "k huge",
        "post",
        "/search/text",
        {"json": {"text": "effusion", "k": 10**9}},
        422,
        "less than or equal to 20",
    ),
    (
        "k true",
        "post",
        "/search/text",
        {"json": {"text": "effusion", "k": True}},
        422,
        "not a boolean",
    ),
    ("empty text", "post", "/search/text", {"json": {"text": ""}}, 422, "at least 1 character"),
    ("blank text", "post", "/search/text", {"json": {"text": "   \n"}}, 422, "text is blank"),
    (
        "long text",
        "post",
        "/search/text",
        {"json": {"text": "a" * 501}},
        422,
        "at most 500 characters",
    ),
    (
        "10 MB text",
        "post",
        "/search/text",
        {"json": {"text": "a" * 10_000_000}},
        413,
        "takes at most 7024 bytes",
    ),
    (
        "not JSON",
        "post",
        "/search/text",
        {"content": b"{", "headers": {"content-type": "application/json"}},
        422,
        "JSON",
    ),
    (
        "extra field",
        "post",
        "/search/text",
        {"json": {"text": "a", "path": "/etc/passwd"}},
        422,
        "Extra inputs",
    ),
    (
        "non-image",
        "post",
        "/search/image",
        {"files": {"file": ("notes.png", b"hello, not an image")}},
        415,
        "not a PNG, JPEG or DICOM",
    ),
    (
        "corrupt DICOM",
        "post",
        "/search/image",
        {"files": {"file": ("scan.dcm", _corrupt_dicom())}},
        422,
        "cannot read DICOM upload 'scan.dcm'",
    ),
    (
        "corrupt PNG",
        "post",
        "/search/image",
        {"files": {"file": ("x.png", _png(64)[:60])}},
        422,
        "cannot read PNG upload",
    ),
    ("empty upload", "post", "/search/image", {"files": {"file": ("x.png", b"")}}, 422, "empty"),
    (
        "no file field",
        "post",
        "/search/image",
        {"files": {"image": ("x.png", _png(64))}},
        422,
        "file",
    ),
    (
        "too many pixels",
        "post",
        "/search/image",
        {"files": {"file": ("big.png", _png(1100))}},
        422,
        "at most 1024 per side",
    ),
    (
        "upload too big",
        "post",
        "/search/image",
        {"files": {"file": ("x.png", b"\x89PNG\r\n\x1a\n" + b"0" * 400_000)}},
        413,
        "Too Large",
    ),
    (
        "image k = 0",
        "post",
        "/search/image?k=0",
        {"files": {"file": ("x.png", _png(64))}},
        422,
        "greater than or equal to 1",
    ),
    (
        "bad target",
        "post",
        "/search/image?target=video",
        {"files": {"file": ("x.png", _png(64))}},
        422,
        "'image' or 'report'",
    ),
    ("unknown id", "get", "/records/no-such-record", {}, 404, "no record with id 'no-such-record'"),
    (
        "../ id",
        "get",
        "/records/..%2F..%2Fmanifest.json",
        {},
        404,
        "no record with id '../../manifest.json'",
    ),
    (
        "../ thumbnail",
        "get",
        "/thumbnails/..%2Frecords.sqlite",
        {},
        404,
        "no thumbnail for id '../records.sqlite'",
    ),
    ("absolute id", "get", "/records//etc/passwd", {}, 404, "no record with id '/etc/passwd'"),
    ("control chars", "get", "/records/a%00b", {}, 422, "none of them control characters"),
    ("empty id", "get", "/records/", {}, 422, "at least 1 character"),
    ("long id", "get", "/records/" + "a" * 513, {}, 422, "at most 512 characters"),
]


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_4xx_and_the_service_keeps_serving(
    client: TestClient, method: str, url: str, kwargs: dict, status: int, message: str
) -> None:
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.text
    # the shapes the schema declares: validation errors for 422, one message otherwise
    detail = response.json()["detail"]
    assert isinstance(detail, list) if status == 422 else isinstance(detail, str)
    assert client.get("/health").status_code == 200
    ok = client.post("/search/text", json={"text": "effusion", "k": 2})
    assert ok.status_code == 200 and len(ok.json()["hits"]) == 2


def test_the_longest_valid_text_fits_the_body_limit(client: TestClient) -> None:
    """500 astral characters, each escaped as two \\uXXXX by a client's JSON encoder."""
    body = json.dumps({"text": "\U0001f600" * 500, "k": 1}, ensure_ascii=True)
    response = client.post(
        "/search/text", content=body, headers={"content-type": "application/json"}
    )
    assert len(body) > 6000 and response.status_code == 200, response.text


def test_api_key_guards_data_but_not_health(searcher: Searcher) -> None:
    with TestClient(create_app(searcher, LIMITS, api_key="s3cret")) as client:
        query = {"json": {"text": "effusion", "k": 2}}
        assert client.post("/search/text", **query).status_code == 401
        wrong = client.post("/search/text", headers={"X-API-Key": "nope"}, **query)
        assert wrong.status_code == 401 and "X-API-Key" in wrong.json()["detail"]
        assert (
            client.post("/search/text", headers={"X-API-Key": "s3cret"}, **query).status_code == 200
        )
        for url in ("/records/synth-000001", "/thumbnails/synth-000001", "/stats"):
            assert client.get(url).status_code == 401
            assert client.get(url, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.post("/search/image", files={"file": ("x.png", _png(64))}).status_code == 401
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200


@pytest.fixture(scope="module")
def server(
    index_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    serve_index: Callable[..., AbstractContextManager[str]],
) -> Iterator[str]:
    """``adaptor serve`` with an API key and small limits."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    limits = ("--max-k", "20", "--max-upload-mb", "0.25")
    with serve_index(index_dir, log, *limits, api_key="k3y") as url:
        yield url


@pytest.mark.slow
def test_real_server_endpoints_and_bad_requests(server: str, synthetic_dir: Path) -> None:
    key = {"X-API-Key": "k3y"}
    with httpx.Client(base_url=server, timeout=60) as http:
        assert http.get("/health").json()["records"] == 40
        assert http.post("/search/text", json={"text": "effusion"}).status_code == 401
        hits = http.post("/search/text", json={"text": "effusion", "k": 3}, headers=key).json()[
            "hits"
        ]
        assert len(hits) == 3
        record = _record(synthetic_dir, 5)
        png = (synthetic_dir / record["image"]).read_bytes()
        found = http.post("/search/image?k=2", files={"file": ("q.png", png)}, headers=key)
        assert found.status_code == 200 and found.json()["hits"][0]["id"] == record["id"]
        assert http.get(f"/records/{record['id']}", headers=key).json()["id"] == record["id"]
        assert http.get(f"/thumbnails/{record['id']}", headers=key).content[:3] == b"\xff\xd8\xff"
        assert http.get("/stats", headers=key).json()["api_key_required"] is True
        assert "/search/image" in http.get("/openapi.json").json()["paths"]
        assert 'id="results"' in http.get("/").text
        for method, path, kwargs, status in (
            ("post", "/search/text", {"json": {"text": "a", "k": 0}}, 422),
            ("post", "/search/text", {"json": {"text": "a", "k": 21}}, 422),
            ("post", "/search/text", {"json": {"text": ""}}, 422),
            ("post", "/search/text", {"json": {"text": "a" * 10_000_000}}, 413),
            ("post", "/search/image", {"files": {"file": ("n.txt", b"plain text")}}, 415),
            ("post", "/search/image", {"files": {"file": ("c.dcm", _corrupt_dicom())}}, 422),
            (
                "post",
                "/search/image",
                {"files": {"file": ("b.png", b"\x89PNG" + b"0" * 400_000)}},
                413,
            ),
            ("get", "/records/unknown", {}, 404),
            ("get", "/records/..%2F..%2F..%2Fetc%2Fpasswd", {}, 404),
        ):
            response = getattr(http, method)(path, headers=key, **kwargs)
            assert response.status_code == status, (path, response.text)
            assert http.get("/health").status_code == 200


@pytest.mark.slow
def test_real_server_micro_batches_concurrent_queries(server: str, searcher: Searcher) -> None:
    key = {"X-API-Key": "k3y"}
    texts = [f"pleural effusion and opacity number {i}" for i in range(32)]
    expected = [[h.id for h in hits] for hits in searcher.search_text(texts, k=5)]
    with httpx.Client(base_url=server, timeout=120) as http:
        before = http.get("/stats", headers=key).json()["batching"]["text"]

        def ask(text: str) -> list[str]:
            response = http.post("/search/text", json={"text": text, "k": 5}, headers=key)
            assert response.status_code == 200, response.text
            return [h["id"] for h in response.json()["hits"]]

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, texts))
        after = http.get("/stats", headers=key).json()["batching"]["text"]
    assert answers == expected  # each client got its own query's results
    assert after["items"] - before["items"] == len(texts)
    assert after["batches"] - before["batches"] < len(texts) and after["largest"] > 1
