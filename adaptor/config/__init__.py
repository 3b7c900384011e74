"""One pydantic model per stage: the single source of every default, bound and choice.

The stage code takes these models (``EmbedConfig(EmbedOptions)`` adds only its I/O),
the ``adaptor`` commands make their options from them (:mod:`adaptor.config.cli`), and
:class:`RunConfig`, the YAML of ``adaptor run`` and the batch jobs, is made of them.

- :mod:`~adaptor.config.synth`: :class:`SynthOptions`
- :mod:`~adaptor.config.embed`: :class:`EmbedOptions`, :class:`ActorOptions`
- :mod:`~adaptor.config.pretrain`: :class:`PretrainOptions`, :class:`ModelOptions`
- :mod:`~adaptor.config.downstream`: :class:`GridOptions`, :class:`SplitOptions`,
  :class:`ClassificationOptions`,
  :class:`SegmentationOptions`, :class:`TuningOptions`, :class:`ZeroShotOptions`
- :mod:`~adaptor.config.retrieval`: :class:`IndexOptions`, :class:`ServeOptions`,
  :class:`ServiceLimits`
- :mod:`~adaptor.config.run`: :class:`RunConfig`, :func:`load_config`, :func:`to_yaml`
"""

from adaptor.config.base import ConfigError, Options
from adaptor.config.downstream import (
    ClassificationOptions,
    GridOptions,
    LabelOptions,
    SegmentationOptions,
    SplitOptions,
    TuningOptions,
    ZeroShotOptions,
)
from adaptor.config.embed import ActorOptions, EmbedOptions
from adaptor.config.pretrain import ModelOptions, PretrainOptions
from adaptor.config.retrieval import IndexOptions, ServeOptions, ServiceLimits
from adaptor.config.run import MOVED, FinetuneOptions, RunConfig, load_config, to_yaml
from adaptor.config.synth import SynthOptions

__all__ = [
    "MOVED",
    "ActorOptions",
    "ClassificationOptions",
    "ConfigError",
    "EmbedOptions",
    "FinetuneOptions",
    "GridOptions",
    "IndexOptions",
    "LabelOptions",
    "ModelOptions",
    "Options",
    "PretrainOptions",
    "RunConfig",
    "SegmentationOptions",
    "ServeOptions",
    "ServiceLimits",
    "SplitOptions",
    "SynthOptions",
    "TuningOptions",
    "ZeroShotOptions",
    "load_config",
    "to_yaml",
]
