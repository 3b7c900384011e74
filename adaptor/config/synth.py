"""The synthetic paired set (``adaptor synth``; the flow's ``synth:`` section).

:class:`SynthOptions` picks an acquisition by name; :class:`Acquisition` holds what a name
stands for (``ACQUISITIONS``), and ``generate_synthetic`` also takes one directly, for a
shift of your own.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from adaptor.config.base import Options

MIN_SIZE, MAX_SIZE = 224, 512  # image sides the synthetic generator draws
ABNORMAL_SHARE = 0.65  # share of standard studies with at least one finding
AcquisitionName = Literal["standard", "shifted"]


class Acquisition(Options):
    """How a study is acquired and read out: the scanner, its processing, its population.

    Every value here at its default is the standard acquisition (byte-identical output).
    Blur, resolution and noise act on the exposure before the display curve, as a detector
    would; contrast, brightness and gamma change that curve.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    contrast: float = Field(
        1.0, gt=0, le=4, description="multiplies the exposure contrast (below 1: flatter, greyer)"
    )
    brightness: float = Field(
        0.0, ge=-0.5, le=0.5, description="added to the exposure brightness (grey levels / 255)"
    )
    gamma: float = Field(
        1.0, gt=0, le=4, description="multiplies the display gamma (above 1: darker mid-tones)"
    )
    blur: float = Field(
        0.0,
        ge=0,
        le=8,
        description="Gaussian blur sigma in pixels at 256 px (detector and focal-spot unsharpness)",
    )
    resolution: float = Field(
        1.0,
        ge=0.125,
        le=1,
        description="detector sampling as a share of the image side: the exposure is box-averaged "
        "down to it and resized back up (1: full resolution)",
    )
    noise: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="standard deviation of added pixel noise (quantum mottle), as a share of the "
        "exposure range",
    )
    prevalence: float = Field(
        1.0,
        gt=0,
        le=1 / ABNORMAL_SHARE,
        description=f"multiplies the share of studies with any finding (standard: "
        f"{ABNORMAL_SHARE:.0%}); the mix of findings and how many a study has stay the same",
    )

    @property
    def is_standard(self) -> bool:
        return self == Acquisition()


ACQUISITIONS: dict[str, Acquisition] = {
    "standard": Acquisition(),
    # another site's scanner and ward: a flatter, darker display curve, a softer and coarser
    # detector with more quantum noise, and sicker patients (about 85 % with a finding).
    # A linear probe on frozen EfficientNet-Lite0 features trained on the standard set
    # drops from macro AUROC 0.95 to 0.72 on it (400 records each; trained on this set
    # instead: 0.93), see tests/data/test_synthetic_shift.py
    "shifted": Acquisition(
        contrast=0.7,
        brightness=0.04,
        gamma=1.4,
        blur=1.0,
        resolution=0.5,
        noise=0.025,
        prevalence=1.3,
    ),
}


class SynthOptions(Options):
    """The synthetic paired set made when no ``source`` is given.

    A second set for transfer studies: ``acquisition="shifted"`` with another ``seed``
    (other patients) and, for an image-only target, ``reports=False``.
    """

    n: int = Field(2000, ge=1, description="number of records")
    seed: int = Field(0, ge=0, description="random seed; the same seed gives byte-identical output")
    size: int = Field(256, ge=MIN_SIZE, le=MAX_SIZE, description="image side in pixels")
    acquisition: AcquisitionName = Field(
        "standard",
        description="standard, or shifted: another site for transfer studies (flatter, "
        "blurred, half-resolution, noisier images, more findings; same labels)",
    )
    reports: bool = Field(
        True, description="write a report per image; false: an image-only set (labels, masks kept)"
    )
