"""Choosing what trains: :func:`apply_tuning` dispatches a method to its module and freezes
the rest; :class:`TuningReport` says what it did."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any, get_args

from torch import nn

from adaptor.config.downstream import TuningMethod
from adaptor.errors import AdaptorError
from adaptor.peft.adapters import ADAPTER_TYPES, add_adapters
from adaptor.peft.apla import apla_projection_names, apply_apla
from adaptor.peft.lora import apply_lora, lora_target_names, merge_lora
from adaptor.peft.norm_tuning import norm_parameter_names
from adaptor.peft.targets import Targets, find_targets, unused_parameters

METHODS: tuple[str, ...] = get_args(TuningMethod)
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "frozen": {},
    "lora": {"rank": 8, "alpha": 16.0, "ffn": False},
    "adapter": {"bottleneck": None, "fusion": False, "fusion_heads": 4},
    "layernorm": {"ffn": False, "attention": False},
    "apla": {"columns": 1.0, "seed": 0},
    "full": {},
}


class TuningError(AdaptorError, ValueError):
    """A tuning method that does not apply to a model, or bad options for it."""


@dataclass
class TuningReport:
    """What :func:`apply_tuning` made trainable.

    ``encoder_parameters`` counts the untuned module's parameters in use (``excluded`` ones,
    which its forward never touches, left out); ``targets`` names the tuned or adapted
    modules; ``notes`` lists what was deliberately skipped.
    """

    method: str
    options: dict[str, Any]
    trainable_parameters: int
    encoder_parameters: int
    targets: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def trainable_percent(self) -> float:
        """Trainable parameters as a percentage of the encoder's."""
        return 100.0 * self.trainable_parameters / max(1, self.encoder_parameters)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (with ``trainable_percent``)."""
        return {**asdict(self), "trainable_percent": self.trainable_percent}


def method_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` completed with the method's defaults; raise TuningError on unknown ones."""
    if method not in METHODS:
        raise TuningError(f"unknown tuning method {method!r}; choose from {', '.join(METHODS)}")
    accepted = DEFAULT_OPTIONS[method]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) or "no options"
        raise TuningError(
            f"{method} does not take option(s) {', '.join(unknown)} (it takes {takes})"
        )
    merged = {**accepted, **options}
    _check_options(method, merged)
    return merged


def apply_tuning(
    module: nn.Module, method: str, *, exclude: Collection[str] = (), **options: Any
) -> TuningReport:
    """Freeze ``module`` and make only ``method``'s parameters trainable (in place).

    ``exclude`` names parameters the module's forward never uses (see
    :func:`~adaptor.peft.targets.unused_parameters`): they stay frozen and are not counted.
    """
    opts = method_options(method, options)
    params = dict(module.named_parameters())
    unknown = sorted(set(exclude) - set(params))
    if unknown:
        raise TuningError(f"cannot exclude unknown parameter(s) {unknown[:3]}")
    excluded = set(exclude)
    excluded_modules = {name.rpartition(".")[0] for name in excluded}
    in_use = sum(p.numel() for n, p in params.items() if n not in excluded)
    module.requires_grad_(False)
    model = type(module).__name__
    targets = find_targets(module, skip=ADAPTER_TYPES)
    notes: list[str] = []
    if method == "full":
        for name, p in params.items():
            p.requires_grad_(name not in excluded)
        tuned = _owners(n for n in params if n not in excluded)
    elif method == "lora":
        if opts["ffn"] and not targets.layers:
            raise TuningError(
                f"lora's ffn option needs transformer layers; {model} has none "
                "(LoRA goes on all its dense convolutions and linear layers)"
            )
        tuned = lora_target_names(targets, ffn=opts["ffn"], excluded=excluded_modules)
        if not tuned:
            raise TuningError(f"lora does not apply to {model}: no attention, conv or linear layer")
        notes = apply_lora(module, tuned, opts["rank"], opts["alpha"])
    elif method == "adapter":
        _need_layers(targets, "adapter", model, "bottleneck adapters go after them")
        if opts["fusion"] and not any(
            s.packed for layer in targets.layers for s in layer.attentions
        ):
            raise TuningError(
                f"fusion adapters need nn.MultiheadAttention layers (cross-modal attention, as in "
                f"the Adaptor); {model} has none"
            )
        try:
            tuned = add_adapters(
                module,
                targets,
                bottleneck=opts["bottleneck"],
                fusion=opts["fusion"],
                fusion_heads=opts["fusion_heads"],
                excluded=excluded_modules,
            )
        except ValueError as err:
            raise TuningError(f"adapter: {err}") from err
    elif method == "layernorm":
        if (opts["ffn"] or opts["attention"]) and not targets.layers:
            raise TuningError(
                f"layernorm's ffn/attention options need transformer layers; {model} has none"
            )
        names = [
            n
            for n in norm_parameter_names(
                module, targets, ffn=opts["ffn"], attention=opts["attention"]
            )
            if n not in excluded
        ]
        if not names:
            raise TuningError(f"layernorm does not apply to {model}: it has no normalisation layer")
        for name in names:
            params[name].requires_grad_(True)
        tuned = _owners(names)
        kinds = sorted({type(module.get_submodule(n)).__name__ for n in targets.norms})
        if not any(isinstance(module.get_submodule(n), nn.LayerNorm) for n in targets.norms):
            notes = [f"{model} has no LayerNorm: tuning the affine parameters of its {kinds}"]
    elif method == "apla":
        _need_layers(targets, "apla", model, "APLA tunes their attention output projection")
        tuned = apla_projection_names(targets, excluded)
        apply_apla(module, tuned, opts["columns"], opts["seed"])
    else:  # frozen
        tuned = []
    return TuningReport(
        method=method,
        options=opts,
        trainable_parameters=sum(p.numel() for p in module.parameters() if p.requires_grad),
        encoder_parameters=in_use,
        targets=list(tuned),
        excluded=sorted(excluded),
        notes=notes,
    )


def _need_layers(targets: Targets, method: str, model: str, why: str) -> None:
    if not targets.layers:
        raise TuningError(
            f"{method} does not apply to {model}: it has no transformer layers (attention "
            f"followed by a feed-forward block), and {why}"
        )


def _owners(names: Any) -> list[str]:
    return list(dict.fromkeys(n.rpartition(".")[0] for n in names))


def _check_options(method: str, opts: dict[str, Any]) -> None:
    def bad(what: str) -> TuningError:
        return TuningError(f"{method}: {what}")

    if method == "lora":
        if not isinstance(opts["rank"], int) or opts["rank"] < 1:
            raise bad(f"rank must be a positive integer, got {opts['rank']!r}")
        if not float(opts["alpha"]) > 0:
            raise bad(f"alpha must be positive, got {opts['alpha']!r}")
    if method == "adapter":
        b = opts["bottleneck"]
        if b is not None and (not isinstance(b, int) or b < 1):
            raise bad(f"bottleneck must be a positive integer, got {b!r}")
        if not isinstance(opts["fusion_heads"], int) or opts["fusion_heads"] < 1:
            raise bad(f"fusion_heads must be a positive integer, got {opts['fusion_heads']!r}")
    if method == "apla" and not 0.0 < float(opts["columns"]) <= 1.0:
        raise bad(f"columns must be a fraction in (0, 1], got {opts['columns']!r}")


__all__ = [
    "DEFAULT_OPTIONS",
    "METHODS",
    "TuningError",
    "TuningReport",
    "apply_tuning",
    "find_targets",
    "merge_lora",
    "method_options",
    "unused_parameters",
]
