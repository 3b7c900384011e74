"""Zero-shot prompts: for each label, report-like sentences stating it (positive) and
ruling it out (negative).

Built-in prompts cover the synthetic set's findings and the common CheXpert, ChestX-ray14,
RSNA and COVIDx labels. A label is looked up by its normalised name (lower case, runs of
other characters as ``_``), so ``Pleural Effusion`` and ``pleural_effusion`` meet; a few
aliases (``effusion``, ``support_devices``, ``covid_19``, ``normal``) map to the same
prompts. User prompts come from a YAML (or JSON) mapping, several per side::

    pleural_effusion:
      positive: ["There is a left pleural effusion.", "Blunting of the costophrenic angle."]
      negative: ["No pleural effusion."]
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from adaptor.errors import AdaptorError

SIDES = ("positive", "negative")


class PromptError(AdaptorError, ValueError):
    """Prompts that cannot be used: a label without any, or a prompts mapping of the wrong shape."""


@dataclass(frozen=True)
class LabelPrompts:
    """The sentences stating a label (``positive``) and ruling it out (``negative``)."""

    positive: tuple[str, ...]
    negative: tuple[str, ...]

    def to_dict(self) -> dict[str, list[str]]:
        """A JSON-ready dict."""
        return {"positive": list(self.positive), "negative": list(self.negative)}


def _p(positive: Sequence[str], negative: Sequence[str]) -> LabelPrompts:
    return LabelPrompts(tuple(positive), tuple(negative))


BUILTIN_PROMPTS: dict[str, LabelPrompts] = {
    "no_finding": _p(
        [
            "No acute cardiopulmonary process.",
            "Normal chest radiograph.",
            "The lungs are clear. Heart size is normal.",
        ],
        [
            "There is airspace opacity.",
            "Pleural effusion.",
            "Cardiomegaly.",
            "Pneumothorax.",
            "Pulmonary nodule.",
        ],
    ),
    "opacity": _p(
        [
            "There is opacity in the right lower lobe.",
            "There is consolidation in the left lung base.",
            "Patchy airspace disease in the right upper zone.",
            "Left lower lobe opacity, concerning for pneumonia.",
        ],
        ["No focal airspace opacity.", "No focal consolidation.", "The lungs are clear."],
    ),
    "lung_opacity": _p(
        [
            "There is opacity in the right lower lobe.",
            "Patchy airspace opacity in the left lung base.",
            "New opacity involving the right upper lobe.",
        ],
        ["No focal airspace opacity.", "The lungs are clear."],
    ),
    "consolidation": _p(
        ["There is consolidation in the right lower lobe.", "Left lower lobe consolidation."],
        ["No focal consolidation.", "There is no consolidation."],
    ),
    "pneumonia": _p(
        [
            "Airspace opacity concerning for pneumonia.",
            "Consolidation consistent with pneumonia.",
        ],
        ["No evidence of pneumonia.", "No focal consolidation to suggest pneumonia."],
    ),
    "atelectasis": _p(
        ["Left basilar atelectasis.", "There is bibasilar atelectasis."],
        ["No atelectasis.", "The lungs are well expanded."],
    ),
    "edema": _p(
        [
            "Pulmonary edema.",
            "There is interstitial edema with vascular congestion.",
        ],
        ["No pulmonary edema.", "No vascular congestion or edema."],
    ),
    "cardiomegaly": _p(
        [
            "The heart is enlarged.",
            "Cardiomegaly.",
            "Moderate cardiomegaly.",
            "The cardiac silhouette is enlarged.",
        ],
        [
            "Heart size is normal.",
            "The cardiac silhouette is normal in size.",
            "Normal heart size.",
        ],
    ),
    "enlarged_cardiomediastinum": _p(
        [
            "The cardiomediastinal silhouette is enlarged.",
            "Widened mediastinum.",
        ],
        [
            "The cardiomediastinal silhouette is within normal limits.",
            "Normal mediastinal contours.",
        ],
    ),
    "pleural_effusion": _p(
        [
            "Small left pleural effusion.",
            "There is a moderate right pleural effusion.",
            "Blunting of the left costophrenic angle, consistent with a small effusion.",
            "Fluid in the right pleural space.",
        ],
        ["No pleural effusion.", "There is no pleural effusion."],
    ),
    "pleural_other": _p(
        ["Pleural thickening.", "Pleural plaques are seen."],
        ["No pleural abnormality.", "The pleura is normal."],
    ),
    "pleural_thickening": _p(
        ["Pleural thickening.", "There is apical pleural thickening."],
        ["No pleural thickening.", "The pleura is normal."],
    ),
    "pneumothorax": _p(
        [
            "Small right pneumothorax.",
            "Left apical pneumothorax.",
            "There is a moderate left pneumothorax.",
            "Visible right pleural line with a small pneumothorax.",
        ],
        ["No pneumothorax.", "There is no pneumothorax."],
    ),
    "nodule": _p(
        [
            "A 1.5 cm nodule in the right upper lobe.",
            "There is a 1.2 cm pulmonary nodule in the left lung base.",
            "Rounded nodular density in the left upper zone.",
        ],
        ["No suspicious pulmonary nodules.", "No pulmonary nodules are seen."],
    ),
    "mass": _p(
        ["There is a mass in the lung.", "A large pulmonary mass."],
        ["No pulmonary mass.", "No mass is seen."],
    ),
    "lung_lesion": _p(
        ["There is a lung lesion.", "A pulmonary nodule or mass is seen."],
        ["No pulmonary nodules or masses.", "No focal lung lesion."],
    ),
    "infiltration": _p(
        ["There is an infiltrate in the lung.", "Patchy infiltrates are seen."],
        ["No infiltrate.", "The lungs are clear."],
    ),
    "emphysema": _p(
        ["Emphysema.", "Hyperinflated lungs consistent with emphysema."],
        ["No emphysema.", "The lungs are not hyperinflated."],
    ),
    "fibrosis": _p(
        ["Pulmonary fibrosis.", "Reticular opacities consistent with fibrosis."],
        ["No fibrosis.", "No interstitial lung disease."],
    ),
    "hernia": _p(
        ["Hiatal hernia.", "There is a large hiatal hernia."],
        ["No hernia.", "No hiatal hernia."],
    ),
    "fracture": _p(
        ["There is a rib fracture.", "Acute fracture is seen."],
        ["No acute fracture.", "The osseous structures are intact."],
    ),
    "support_device": _p(
        [
            "Endotracheal tube terminates above the carina.",
            "A central line terminates in the superior vena cava.",
            "A nasogastric tube is seen with its tip in the stomach.",
            "ECG leads overlie the chest.",
        ],
        ["No lines or tubes.", "No support devices."],
    ),
    "covid": _p(
        [
            "Bilateral peripheral opacities consistent with COVID-19 pneumonia.",
            "Multifocal airspace disease concerning for viral pneumonia.",
        ],
        ["No evidence of pneumonia.", "The lungs are clear."],
    ),
}
_ALIASES = {
    "effusion": "pleural_effusion",
    "support_devices": "support_device",
    "covid_19": "covid",
    "normal": "no_finding",
}


def label_key(label: str) -> str:
    """The name prompts are looked up by: lower case, other characters as ``_``, aliases resolved."""
    key = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    return _ALIASES.get(key, key)


def builtin_labels() -> list[str]:
    """Every label name with built-in prompts (aliases included), sorted."""
    return sorted([*BUILTIN_PROMPTS, *_ALIASES])


def find_prompts(label: str, user: Mapping[str, LabelPrompts] | None = None) -> LabelPrompts | None:
    """The prompts of ``label``: the user's (by exact or normalised name), else built-in, else None."""
    user = user or {}
    if label in user:
        return user[label]
    key = label_key(label)
    by_key = {label_key(name): p for name, p in user.items()}
    return by_key.get(key) or BUILTIN_PROMPTS.get(key)


def prompts_for(
    labels: Sequence[str], user: Mapping[str, LabelPrompts] | None = None
) -> dict[str, LabelPrompts]:
    """The prompts of each label (:func:`find_prompts`); a :class:`PromptError` names every
    label that has none."""
    found = {label: find_prompts(label, user) for label in labels}
    missing = [label for label, p in found.items() if p is None]
    if missing:
        raise PromptError(
            f"no prompts for label(s) {', '.join(map(repr, missing))}: give them in a prompts "
            "file (label: {positive: [...], negative: [...]}); built-in prompts exist for "
            + ", ".join(builtin_labels())
        )
    return found  # type: ignore[return-value]


def parse_prompts(data: object, source: str) -> dict[str, LabelPrompts]:
    """Check a ``{label: {positive: [...], negative: [...]}}`` mapping read from ``source``.

    A side may be one string or a list of non-empty strings. Errors name ``source`` and the key.
    """
    if not isinstance(data, Mapping) or not data:
        raise PromptError(
            f"{source}: expected a non-empty mapping of label: {{positive: [...], negative: "
            f"[...]}}, got {type(data).__name__}"
        )
    parsed: dict[str, LabelPrompts] = {}
    for label, entry in data.items():
        if not isinstance(label, str) or not label.strip():
            raise PromptError(f"{source}: label {label!r} is not a non-empty string")
        if not isinstance(entry, Mapping):
            raise PromptError(
                f"{source}: {label}: expected {{positive: [...], negative: [...]}}, "
                f"got {type(entry).__name__}"
            )
        unknown = sorted(map(str, set(entry) - set(SIDES)))
        if unknown:
            raise PromptError(
                f"{source}: {label}: unknown key(s) {', '.join(unknown)} (use positive, negative)"
            )
        sides = [_side(entry.get(side), f"{source}: {label}.{side}") for side in SIDES]
        parsed[label] = LabelPrompts(*sides)
    return parsed


def _side(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if value is None or (isinstance(value, list) and not value):
        raise PromptError(f"{where}: missing; give at least one prompt")
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise PromptError(f"{where}: expected a list of non-empty strings, got {value!r}")
    return tuple(v.strip() for v in value)


def load_prompts(path: str | Path) -> dict[str, LabelPrompts]:
    """Read and check a prompts YAML (or JSON) file."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompts file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise PromptError(f"{path}: not valid YAML: {err}") from None
    return parse_prompts(data, str(path))
