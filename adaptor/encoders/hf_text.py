"""Hugging Face transformer text encoders (MiniLM, CXR-BERT, BioClinicalBERT, PubMedBERT, ...).

Global = mean of the last hidden states over the attention mask (``"mean"``), the first
token's state (``"cls"``) or the model's ``pooler_output`` (``"pooler"``, as the reference
Adaptor takes it); no L2 normalisation. ``max_length`` defaults to
``min(tokenizer.model_max_length, config.max_position_embeddings)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from adaptor.encoders.base import EncoderInfo, TextEncoder, TextOutput, TokenBatch, hub_loading
from adaptor.encoders.fingerprint import fingerprint_module, tokenizer_digest

POOLINGS = ("mean", "cls", "pooler")
_REMOTE_HINT = " If the model ships its own code (e.g. CXR-BERT), append +remote to the name."
_UNBOUNDED = 1_000_000  # HF uses a huge sentinel for "no limit" in model_max_length


class HFTokenize:
    """Picklable tokenizer callable: truncates to ``max_length``, pads to the longest text."""

    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> TokenBatch:
        """Tokenize ``texts``; ``truncated[i]`` when text ``i`` had more than max_length tokens."""
        texts = list(texts)
        full = self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
        enc = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding="longest",
            return_tensors="pt",
        )
        return TokenBatch(dict(enc), [len(ids) > self.max_length for ids in full])


class HFTextEncoder(TextEncoder):
    """A Hugging Face ``AutoModel`` with mean or CLS pooling of its last hidden states, or its
    pooler output."""

    def __init__(
        self,
        name: str,
        source: str | Path,
        *,
        pooling: str = "mean",
        trust_remote_code: bool = False,
        max_length: int | None = None,
    ):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per weight load is noise inside our own bars
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        with hub_loading(str(source), _REMOTE_HINT if not trust_remote_code else ""):
            tokenizer = AutoTokenizer.from_pretrained(
                str(source), trust_remote_code=trust_remote_code
            )
            model, loading = AutoModel.from_pretrained(
                str(source), trust_remote_code=trust_remote_code, output_loading_info=True
            )
        if pooling == "pooler":
            _check_pooler(name, model, loading["missing_keys"])
        super().__init__(model)
        self.pooling = pooling
        self._tokenizer = tokenizer
        self.max_length = max_length or _default_max_length(tokenizer, model.config)
        self.state_dim = int(model.config.hidden_size)
        extra = {
            "kind": "hf_text",
            "pooling": pooling,
            "max_length": self.max_length,
            "tokenizer": tokenizer_digest(tokenizer),
        }
        self.info = EncoderInfo(name, fingerprint_module(model, extra), self.state_dim)

    def make_tokenizer(self) -> HFTokenize:
        """Tokenizer callable for DataLoader workers."""
        return HFTokenize(self._tokenizer, self.max_length)

    def _encode(self, tensors: dict[str, Tensor], with_states: bool) -> TextOutput:
        mask = tensors["attention_mask"]
        output = self._model(**tensors)
        states = output.last_hidden_state.float()
        if self.pooling == "pooler":
            global_ = output.pooler_output.float()
        elif self.pooling == "cls":
            global_ = states[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(states.dtype)
            global_ = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        if not with_states:
            return TextOutput(global_=global_)
        return TextOutput(global_=global_, states=states, attention_mask=mask)


def _check_pooler(name: str, model: Any, missing: set[str]) -> None:
    """Raise unless ``model`` has a pooler whose weights its checkpoint holds (a pooler
    missing from it would be random)."""
    if getattr(model, "pooler", None) is None:
        raise ValueError(f"{name} ({type(model).__name__}) has no pooler; use @cls or @mean")
    if any(key.startswith("pooler.") for key in missing):
        raise ValueError(
            f"{name} has no pooler weights in its checkpoint (its pooler would be random); "
            "use @cls or @mean"
        )


def _default_max_length(tokenizer: Any, config: Any) -> int:
    limits = [
        int(v)
        for v in (tokenizer.model_max_length, getattr(config, "max_position_embeddings", None))
        if v is not None and v < _UNBOUNDED
    ]
    if not limits:
        raise ValueError("neither the tokenizer nor the config gives a maximum sequence length")
    return min(limits)


def sentence_transformers_max_length(folder: str | Path) -> int:
    """``max_seq_length`` from a sentence-transformers folder's sentence_bert_config.json."""
    config = json.loads((Path(folder) / "sentence_bert_config.json").read_text())
    return int(config["max_seq_length"])
