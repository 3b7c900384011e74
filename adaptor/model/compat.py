"""Loading a trained Adaptor for a shard folder, refusing one made for other encoders."""

from __future__ import annotations

from pathlib import Path

from adaptor.errors import AdaptorError
from adaptor.model.adaptor import Adaptor
from adaptor.shards.manifest import Manifest, encoder_differences


class AdaptorMismatchError(AdaptorError, ValueError):
    """An Adaptor trained on other encoders' embeddings than the ones it is asked to read."""


def load_adaptor_for(adaptor_dir: Path, manifest: Manifest, shards: Path) -> Adaptor:
    """``Adaptor.from_pretrained(adaptor_dir)`` in eval mode, checked against the shards' encoders.

    Only the roles both hold are compared: image-only shards (``text_encoder: none``) are
    fine for an Adaptor trained on pairs; whatever needs their text fails when it reads it.
    """
    adaptor = Adaptor.from_pretrained(adaptor_dir).eval()
    trained_on = adaptor.config.encoders or {}
    diffs: list[str] = []
    for role in ("image", "text"):
        if role in trained_on and role in manifest.encoders:
            diffs += encoder_differences(manifest.encoders[role], trained_on[role], role)
    dims = {"image": adaptor.config.image_dim, "text": adaptor.config.text_dim}
    for role, dim in dims.items():
        have = manifest.encoders.get(role, {}).get("dim")
        if have is not None and have != dim:
            diffs.append(f"{role} width: shards {have}, Adaptor expects {dim}")
    if diffs:
        raise AdaptorMismatchError(
            f"the Adaptor in {adaptor_dir} was trained for other encoders than the shards in "
            f"{shards}:\n  " + "\n  ".join(dict.fromkeys(diffs))
        )
    return adaptor
