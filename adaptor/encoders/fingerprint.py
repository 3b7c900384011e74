"""Content fingerprints of frozen encoders: weights plus the config that shapes their outputs."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, tuples as lists."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def fingerprint_module(module: nn.Module, extra: dict) -> str:
    """sha256 hex over the state_dict (sorted keys: key, dtype, shape, raw bytes) and ``extra``.

    ``extra`` holds everything else that changes the embeddings (preprocessing, pooling,
    max_length, tokenizer digest...) and must be JSON-serialisable.
    """
    digest = hashlib.sha256()
    state = module.state_dict()
    for key in sorted(state):
        tensor = state[key].detach()
        header = canonical_json([key, str(tensor.dtype), list(tensor.shape)])
        digest.update(header.encode() + b"\n")
        raw = tensor.cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(memoryview(raw.numpy()))
    digest.update(b"extra\n" + canonical_json(extra).encode())
    return digest.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 hex of a tokenizer's rules: a HF fast tokenizer's JSON, else its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        payload = backend.to_str()
    elif hasattr(tokenizer, "get_vocab"):
        payload = canonical_json(tokenizer.get_vocab())
    else:  # open_clip's SimpleTokenizer
        payload = canonical_json(tokenizer.encoder)
    return hashlib.sha256(payload.encode()).hexdigest()
