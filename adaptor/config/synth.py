"""The synthetic paired set (``adaptor synth``; the flow's ``synth:`` section)."""

from __future__ import annotations

from pydantic import Field

from adaptor.config.base import Options

MIN_SIZE, MAX_SIZE = 224, 512  # image sides the synthetic generator draws


class SynthOptions(Options):
    """The synthetic paired set made when no ``source`` is given."""

    n: int = Field(2000, ge=1, description="number of records")
    seed: int = Field(0, ge=0, description="random seed; the same seed gives byte-identical output")
    size: int = Field(256, ge=MIN_SIZE, le=MAX_SIZE, description="image side in pixels")
