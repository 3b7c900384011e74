"""Retrieval speed and quality, all in one run.

(a) Index types at N × 512 (``--sizes``): exact (Flat) against HNSW32, IVF-Flat and IVF-PQ —
    build time, memory (the index's size), recall@10 against exact and QPS at batch 1 and
    batch 1000 over a sweep of efSearch / nprobe, plus the setting ``adaptor index`` picks
    by itself for recall@10 ≥ 0.95 (tuned on held-out queries, checked on others).
    Data: a mixture of 1000 clusters (``--clusters``), calibrated to the default run's real
    Adaptor outputs (see ``Mixture``); independent uniform vectors are a known worst case
    for every approximate index and would say nothing about embeddings.
(b) The HTTP service (`adaptor serve`, a real uvicorn process on 127.0.0.1) over 100k
    items: p50/p99 latency and QPS at 1, 4 and 16 concurrent clients (bounded request
    loops), next to an in-process loop running the same text queries one by one.
(c) Quality on the embedded default's test split: text → image recall@1/5/10 against
    chance, and label-match precision@10 (the top-10 images' positive labels equal the
    query report's) against the rate of such matches in the gallery.

    python benchmarks/retrieval.py --shards SHARDS --adaptor RUN/adaptor --sizes 100000,1000000

``--shards`` / ``--adaptor`` default to the layout `adaptor run --out data_shards` writes.
Prints one JSON line at the end; ratios are ours ÷ baseline (higher is better).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Idle OpenMP threads sleep instead of spinning: torch and faiss each bring an OpenMP
# runtime, and on a few shared cores their spinning threads starve each other (one text
# query took 750 ms instead of 40 ms on 2 busy cores). The server subprocess inherits it,
# so both sides of the service comparison run alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from adaptor.model import Adaptor  # noqa: E402
from adaptor.retrieval import build_index, open_searcher  # noqa: E402
from adaptor.retrieval.index import ProjectedBatch, new_index, train_size, write_index  # noqa: E402
from adaptor.retrieval.tuning import (  # noqa: E402
    plateaued,
    recall_at_k,
    search_knob,
    set_search_params,
    tune,
)
from adaptor.shards import ShardReader  # noqa: E402

K = 10
TARGET = 0.95


# -- (a) index types -------------------------------------------------------------------------


class Mixture:
    """Unit vectors from ``clusters`` clusters of Zipf-like sizes (weights ∝ rank^-0.5).

    Centres lie in a random 96-d subspace; each cluster spreads along its own 16-d subspace
    of it (``spread``), plus isotropic noise (``iso``). :func:`shape_stats` measures how
    this compares with the default run's real Adaptor outputs (printed in the same run):
    mean nearest-neighbour cosine and the principal components needed for 90 % variance.
    """

    def __init__(
        self,
        dim: int,
        clusters: int = 1000,
        rank: int = 96,
        local: int = 16,
        spread: float = 1.0,
        iso: float = 0.3,
        seed: int = 0,
    ):
        rng = np.random.default_rng(seed)
        basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0]
        centres = rng.normal(size=(clusters, rank)) @ basis.T
        self.centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
        local_basis = np.linalg.qr(rng.normal(size=(clusters, rank, local)))[0]
        self.local = np.einsum("krl,dr->kld", local_basis, basis).astype(np.float32)
        self.local *= spread / np.sqrt(local)
        weights = 1.0 / np.arange(1, clusters + 1) ** 0.5
        self.p = weights / weights.sum()
        self.dim, self.iso = dim, iso

    def sample(self, n: int, seed: int) -> np.ndarray:
        """[n, dim] float32 unit vectors (deterministic for a seed)."""
        rng = np.random.default_rng(seed)
        ids = rng.choice(len(self.p), n, p=self.p)
        out = rng.standard_normal((n, self.dim), np.float32) * np.float32(
            self.iso / np.sqrt(self.dim)
        )
        out += self.centres[ids]
        z = rng.standard_normal((n, self.local.shape[1]), np.float32)
        order = np.argsort(ids, kind="stable")
        bounds = np.searchsorted(ids[order], np.arange(len(self.p) + 1))
        for k in range(len(self.p)):  # one small matmul per cluster
            rows = order[bounds[k] : bounds[k + 1]]
            if len(rows):
                out[rows] += z[rows] @ self.local[k]
        faiss.normalize_L2(out)
        return out


def shape_stats(x: np.ndarray) -> dict:
    """Mean cosine to the nearest other vector, and principal components for 90 % variance."""
    x = np.ascontiguousarray(x[:2000], dtype=np.float32)
    scores = faiss.knn(x, x, 2, metric=faiss.METRIC_INNER_PRODUCT)[0]
    centred = x - x.mean(axis=0)
    var = np.linalg.svd(centred, compute_uv=False) ** 2
    components = int(np.searchsorted(np.cumsum(var) / var.sum(), 0.9) + 1)
    return {"nn_cosine": round(float(scores[:, 1].mean()), 3), "pcs_90": components}


def _size_mib(index: faiss.Index) -> float:
    """The index's size as FAISS writes it (vectors or codes, graph links, id map)."""
    with tempfile.NamedTemporaryFile(suffix=".faiss") as tmp:
        faiss.write_index(index, tmp.name)
        return os.path.getsize(tmp.name) / 2**20


def _qps_batch1(index: faiss.Index, queries: np.ndarray, seconds: float) -> float:
    done, began = 0, time.perf_counter()
    while done < len(queries) and (done < 20 or time.perf_counter() - began < seconds):
        index.search(queries[done : done + 1], K)
        done += 1
    return done / (time.perf_counter() - began)


def _qps_batch(index: faiss.Index, queries: np.ndarray) -> tuple[float, np.ndarray]:
    began = time.perf_counter()
    labels = index.search(queries, K)[1]
    return len(queries) / (time.perf_counter() - began), labels


def _build(factory: str, data: np.ndarray, seed: int) -> tuple[faiss.Index, float, float]:
    began = time.perf_counter()
    index = new_index(data.shape[1], factory)
    if not index.is_trained:
        sample = np.random.default_rng(seed).choice(
            len(data), train_size(index, len(data)), replace=False
        )
        index.train(data[np.sort(sample)])
    for start in range(0, len(data), 65536):
        chunk = data[start : start + 65536]
        index.add_with_ids(chunk, np.arange(start, start + len(chunk), dtype=np.int64))
    return index, time.perf_counter() - began, _size_mib(index)


def bench_index_types(
    data: np.ndarray, mixture: Mixture, factories: list[str], qps_seconds: float
) -> dict:
    n, dim = data.shape
    queries, tune_queries = mixture.sample(1000, seed=2), mixture.sample(500, seed=3)
    print(
        f"\n== N = {n:,} x {dim} (mixture of {len(mixture.p)} clusters), "
        "1000 eval + 500 tuning queries"
    )
    exact, build_s, mem = _build("Flat", data, 0)
    exact_b1 = _qps_batch1(exact, queries, qps_seconds)
    exact_b1000, truth = _qps_batch(exact, queries)
    tune_truth = exact.search(tune_queries, K)[1]
    del exact
    print(
        f"Flat (exact)       build {build_s:7.1f}s  mem {mem:7.0f} MiB  recall 1.000  "
        f"QPS b1 {exact_b1:8.1f}  b1000 {exact_b1000:9.1f}"
    )
    out: dict = {
        "n": n,
        "clusters": len(mixture.p),
        "exact_build_s": round(build_s, 1),
        "exact_mem_mib": round(mem),
        "exact_qps_b1": round(exact_b1, 1),
        "exact_qps_b1000": round(exact_b1000, 1),
        "indexes": {},
    }
    for factory in factories:
        index, build_s, mem = _build(factory, data, 0)
        auto = tune(index, [tune_queries], [tune_truth], TARGET)
        name, values = search_knob(index)  # type: ignore[misc]
        chosen = auto.params[name]
        sweep = []
        for value in values:
            set_search_params(index, {name: value})
            b1 = _qps_batch1(index, queries, qps_seconds)
            b1000, labels = _qps_batch(index, queries)
            recall = recall_at_k(labels, truth)
            sweep.append(
                {
                    name: value,
                    "recall": round(recall, 4),
                    "qps_b1": round(b1, 1),
                    "qps_b1000": round(b1000, 1),
                }
            )
            mark = "  <- auto-tuned" if value == chosen else ""
            print(
                f"{factory:18} {name}={value:<5} recall@10 {recall:.3f}  QPS b1 {b1:8.1f} "
                f"({b1 / exact_b1:5.1f}x exact)  b1000 {b1000:9.1f}{mark}"
            )
            if value >= chosen and (
                recall >= 0.995 or plateaued([p["recall"] for p in sweep], gain=0.001)
            ):
                break
        auto_point = next(p for p in sweep if p[name] == chosen)
        print(
            f"{factory:18} build {build_s:.1f}s, mem {mem:.0f} MiB; auto-tuned {name}={chosen} "
            f"(tuning recall {auto.recall:.3f}, eval recall {auto_point['recall']:.3f})"
        )
        out["indexes"][factory] = {
            "build_s": round(build_s, 1),
            "mem_mib": round(mem),
            "knob": name,
            "auto": auto_point,
            "auto_reached_target": auto.reached,
            "sweep": sweep,
        }
        del index
    best = [
        (p["qps_b1"], f, p)
        for f, r in out["indexes"].items()
        for p in r["sweep"]
        if p["recall"] >= TARGET
    ]
    if best:
        qps, factory, point = max(best, key=lambda t: t[0])
        out["best_at_target"] = {"factory": factory, **point}
        out["best_vs_exact_qps_b1_ratio"] = round(qps / exact_b1, 1)
        out["best_vs_exact_qps_b1000_ratio"] = round(point["qps_b1000"] / exact_b1000, 1)
        auto = [r["auto"] for r in out["indexes"].values() if r["auto"]["recall"] >= TARGET]
        out["auto_vs_exact_qps_b1_ratio"] = (
            round(max(a["qps_b1"] for a in auto) / exact_b1, 1) if auto else None
        )
    return out


# -- (c) quality ---------------------------------------------------------------------------


def bench_quality(shards: Path, adaptor: Path, work: Path) -> dict:
    print("\n== quality: text -> image on the test split")
    index = build_index(
        shards,
        adaptor,
        work / "quality",
        split="test",
        thumbnails=False,
        progress=False,
        log=lambda _: None,
    )
    searcher = open_searcher(index.out)
    meta = ShardReader(shards).load(split="test").meta
    ids = [m["id"] for m in meta]
    positives = [frozenset(k for k, v in m["labels"].items() if v == 1) for m in meta]
    hits = []
    for start in range(0, len(meta), 64):
        hits += searcher.search_text([m["report"] for m in meta[start : start + 64]], k=K)
    n = len(ids)
    out: dict = {"n_test": n}
    for k in (1, 5, 10):
        recall = np.mean([ids[q] in {h.id for h in row[:k]} for q, row in enumerate(hits)])
        out[f"t2i_r@{k}"], out[f"chance_r@{k}"] = round(float(recall), 3), round(k / n, 3)
    by_id = dict(zip(ids, positives, strict=True))
    precision = np.mean(
        [np.mean([by_id[h.id] == positives[q] for h in row]) for q, row in enumerate(hits)]
    )
    same = np.mean([[a == b for b in positives] for a in positives])
    out["label_p@10"], out["label_p@10_chance"] = round(float(precision), 3), round(float(same), 3)
    out["label_p@10_ratio"] = round(float(precision / same), 2)
    out["t2i_r@10_ratio"] = round(out["t2i_r@10"] / out["chance_r@10"], 1)
    table = ShardReader(shards).load()
    model = Adaptor.from_pretrained(adaptor).eval()
    with torch.inference_mode():
        out["adaptor_shape_image"] = shape_stats(model.encode_image(table.arrays["image"]).numpy())
        out["adaptor_shape_text"] = shape_stats(model.encode_text(table.arrays["text"]).numpy())
    print(
        f"{n} test reports against {n} test images: recall@1/5/10 "
        f"{out['t2i_r@1']:.3f} / {out['t2i_r@5']:.3f} / {out['t2i_r@10']:.3f} "
        f"(chance {out['chance_r@1']:.3f} / {out['chance_r@5']:.3f} / {out['chance_r@10']:.3f}); "
        f"label-match precision@10 {precision:.3f} (chance {same:.3f})"
    )
    print(
        f"shape of the real Adaptor outputs ({len(table)} records): image "
        f"{out['adaptor_shape_image']}, text {out['adaptor_shape_text']}"
    )
    return out


# -- (b) the service -----------------------------------------------------------------------


def _service_index(shards: Path, adaptor_dir: Path, out: Path, n: int) -> list[str]:
    """An index of ``n`` items: the real records' Adaptor vectors, replicated with noise.

    Returns the test split's reports, used as queries.
    """
    reader = ShardReader(shards)
    table = reader.load()
    adaptor = Adaptor.from_pretrained(adaptor_dir).eval()
    with torch.inference_mode():
        image = adaptor.encode_image(table.arrays["image"]).numpy()
        text = adaptor.encode_text(table.arrays["text"]).numpy()
    base = len(table)
    rng = np.random.default_rng(0)

    def noisy(x: np.ndarray) -> np.ndarray:
        y = x + 0.3 / np.sqrt(x.shape[1]) * rng.normal(size=x.shape).astype(np.float32)
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    def batches() -> Iterator[ProjectedBatch]:
        for start in range(0, n, base):
            rows = np.arange(start, min(n, start + base)) % base
            copy = start // base
            meta = [{**table.meta[i], "id": f"{table.meta[i]['id']}~{copy}"} for i in rows]
            yield ProjectedBatch(meta, noisy(image[rows]), noisy(text[rows]))

    encoders = {
        r: {k: e.get(k) for k in ("name", "fingerprint", "dim")}
        for r, e in reader.manifest.encoders.items()
    }
    write_index(
        out,
        batches,
        total=n,
        width=adaptor.config.width,
        encoders=encoders,
        adaptor_dir=adaptor_dir,
        key={"benchmark": n},
        progress=False,
        log=lambda _: None,
    )
    return [m["report"] for m in table.meta if m["split"] == "test"]


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    return float(np.percentile(latencies, 50) * 1000), float(np.percentile(latencies, 99) * 1000)


async def _load(url: str, queries: list[str], clients: int, per_client: int) -> dict:
    latencies: list[float] = []
    errors = 0

    async def client(c: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in range(per_client):
            text = queries[(c * per_client + i) % len(queries)]
            began = time.perf_counter()
            try:
                response = await http.post(f"{url}/search/text", json={"text": text, "k": K})
                ok = response.status_code == 200 and len(response.json()["hits"]) == K
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - began)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(clients)))
        wall = time.perf_counter() - began
    p50, p99 = _percentiles(latencies)
    return {
        "qps": round(len(latencies) / wall, 1),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "errors": errors,
        "requests": len(latencies),
    }


def bench_service(shards: Path, adaptor: Path, work: Path, n: int, requests: int) -> dict:
    print(f"\n== service: {n:,} items, text queries (test-split reports), k={K}")
    folder = work / "service"
    queries = _service_index(shards, adaptor, folder, n)
    searcher = open_searcher(folder)
    searcher.encoder.warm()
    searcher.search_text(queries[:4], k=K)  # first-call costs out of the way
    latencies = []
    began = time.perf_counter()
    for i in range(requests):
        t0 = time.perf_counter()
        searcher.search_text([queries[i % len(queries)]], k=K)
        latencies.append(time.perf_counter() - t0)
    inproc_qps = requests / (time.perf_counter() - began)
    p50, p99 = _percentiles(latencies)
    print(
        f"in-process, one by one   QPS {inproc_qps:7.1f}  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
        f"({searcher.manifest['factory']} index)"
    )
    out: dict = {
        "service_n": n,
        "service_factory": searcher.manifest["factory"],
        "inprocess_qps": round(inproc_qps, 1),
        "inprocess_p50_ms": round(p50, 1),
        "inprocess_p99_ms": round(p99, 1),
    }
    del searcher
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "ADAPTOR_API_KEY"}
    log = open(work / "serve.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "adaptor.cli", "serve", "--index", str(folder), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"adaptor serve did not start: {(work / 'serve.log').read_text()}")
            time.sleep(0.5)
        asyncio.run(_load(url, queries, 4, 4))  # warm-up

        def batching() -> dict:
            return httpx.get(f"{url}/stats").json()["batching"]["text"]

        for clients in (1, 4, 16):
            before = batching()
            result = asyncio.run(_load(url, queries, clients, max(1, requests // clients)))
            after = batching()
            batches = after["batches"] - before["batches"]
            result["mean_batch"] = round((after["items"] - before["items"]) / max(1, batches), 2)
            out[f"service_{clients}c"] = result
            print(
                f"service, {clients:2} client(s)     QPS {result['qps']:7.1f}  "
                f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
                f"errors {result['errors']}/{result['requests']}  "
                f"mean batch through the encoders {result['mean_batch']}"
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    out["service_16c_vs_inprocess_qps_ratio"] = round(out["service_16c"]["qps"] / inproc_qps, 2)
    out["service_errors"] = sum(out[f"service_{c}c"]["errors"] for c in (1, 4, 16))
    return out


def _summary(result: dict) -> dict:
    """The figures for the final JSON line (the sweeps are in the printed lines)."""
    out = {"benchmark": "retrieval", **result.get("quality", {}), **result.get("service", {})}
    if "mixture_shape" in result:
        out["mixture_shape"] = result["mixture_shape"]
    for key, section in result.items():
        if not key.startswith("index_"):
            continue
        n = section["n"]
        for name in (
            "clusters",
            "exact_build_s",
            "exact_mem_mib",
            "exact_qps_b1",
            "exact_qps_b1000",
            "best_at_target",
            "best_vs_exact_qps_b1_ratio",
            "best_vs_exact_qps_b1000_ratio",
            "auto_vs_exact_qps_b1_ratio",
        ):
            if name in section:
                out[f"n{n}_{name}"] = section[name]
        for factory, r in section["indexes"].items():
            out[f"n{n}_{factory}"] = {
                "build_s": r["build_s"],
                "mem_mib": r["mem_mib"],
                "auto": r["auto"],
            }
    return out


def main() -> None:
    from adaptor.config import load_config
    from adaptor.run import flow_paths

    default = flow_paths(load_config(None), Path("data_shards"))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=Path, default=default.shards)
    parser.add_argument("--adaptor", type=Path, default=default.adaptor)
    parser.add_argument(
        "--sizes", default="100000,1000000", help="index sizes for (a), comma-separated"
    )
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument(
        "--clusters",
        type=int,
        default=1000,
        help="mixture clusters; many more than IVF lists keeps lists from matching clusters",
    )
    parser.add_argument(
        "--factories",
        default="HNSW32,Flat;IVF{nlist},Flat;IVF{nlist},PQ64",
        help="';'-separated; {nlist} becomes --nlist-per-sqrt-n x sqrt(N) rounded to a power of 2",
    )
    parser.add_argument("--nlist-per-sqrt-n", type=float, default=1.0)
    parser.add_argument(
        "--hnsw-max-n",
        type=int,
        default=10**9,
        help="skip HNSW factories above this N (its build is the slowest on few cores)",
    )
    parser.add_argument("--qps-seconds", type=float, default=2.0, help="time per batch-1 QPS point")
    parser.add_argument("--service-n", type=int, default=100_000)
    parser.add_argument("--service-requests", type=int, default=400, help="per client count")
    parser.add_argument("--skip", default="", help="any of: index,service,quality")
    args = parser.parse_args()
    print(
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads, "
        f"torch threads {torch.get_num_threads()}"
    )
    skip = set(filter(None, args.skip.split(",")))
    result: dict = {"benchmark": "retrieval"}
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
        work = Path(tmp)
        if "quality" not in skip:
            result["quality"] = bench_quality(args.shards, args.adaptor, work)
        if "service" not in skip:
            result["service"] = bench_service(
                args.shards, args.adaptor, work, args.service_n, args.service_requests
            )
        if "index" not in skip:
            sizes = sorted(int(s) for s in args.sizes.split(","))
            mixture = Mixture(args.dim, clusters=args.clusters)
            began = time.perf_counter()
            data = mixture.sample(sizes[-1], seed=1)  # smaller sizes are its prefixes
            result["mixture_shape"] = shape_stats(data)
            print(
                f"\n{sizes[-1]:,} mixture vectors made in {time.perf_counter() - began:.0f}s; "
                f"shape {result['mixture_shape']} (real Adaptor outputs: see quality)"
            )
            for n in sizes:
                nlist = 1 << round(np.log2(args.nlist_per_sqrt_n * np.sqrt(n)))
                factories = [
                    f.format(nlist=nlist)
                    for f in args.factories.split(";")
                    if not (f.startswith("HNSW") and n > args.hnsw_max_n)
                ]
                if n > args.hnsw_max_n:
                    print(f"\n(HNSW skipped at N = {n:,}: --hnsw-max-n {args.hnsw_max_n:,})")
                result[f"index_{n}"] = bench_index_types(
                    data[:n], mixture, factories, args.qps_seconds
                )
            del data
    print(json.dumps(_summary(result)))


if __name__ == "__main__":
    main()
