"""Parameter-efficient tuning of an encoder (or the Adaptor): pick what trains, freeze the rest.

:func:`apply_tuning` turns a frozen ``nn.Module`` into one where only a method's parameters
require grad, and says what it did in a :class:`TuningReport`:

=============  ==============================================================================
``frozen``     nothing trains (today's path)
``lora``       low-rank updates of the attention projections (``ffn=True``: and the FFN
               linears) of every transformer layer; in a CNN, of its dense convolutions
               and linears (options ``rank``, ``alpha``, ``ffn``)
``adapter``    bottleneck adapters after the attention and FFN of every transformer layer;
               ``fusion=True``: a modality-fusion adapter (attention inside the adapter)
               after each ``nn.MultiheadAttention``, as in the Adaptor's cross-modal layers
               (options ``bottleneck``, ``fusion``, ``fusion_heads``)
``layernorm``  gain and bias of every normalisation layer; ``ffn=True`` / ``attention=True``
               add the FFN linears / attention projections
``apla``       the attention output projection of every layer; ``columns < 1``: a random
               subset of its output columns (options ``columns``, ``seed``)
``full``       every parameter in use
=============  ==============================================================================

Modules are found by type (:mod:`adaptor.peft.targets`). A method that does not apply to
a model (adapters on a CNN) raises :class:`TuningError` saying why.
"""

from adaptor.peft.lora import merge_lora
from adaptor.peft.targets import unused_parameters
from adaptor.peft.tuning import (
    DEFAULT_OPTIONS,
    METHODS,
    TuningError,
    TuningReport,
    apply_tuning,
    method_options,
)

__all__ = [
    "DEFAULT_OPTIONS",
    "METHODS",
    "TuningError",
    "TuningReport",
    "apply_tuning",
    "merge_lora",
    "method_options",
    "unused_parameters",
]
