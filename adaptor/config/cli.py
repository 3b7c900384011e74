"""Command-line options made from the config models, for ``adaptor`` and the batch jobs.

A command parameter annotated with a config model becomes one Typer option per field
(nested models flattened: ``PretrainOptions.model.width`` is ``--width``), and one whose
default is :func:`from_field` becomes that field's option. Each option takes the field's
default, its description as help (with its bounds), and lists in their comma form
(``--fractions 0.01,0.1,1``). The command receives the validated model (or field value);
an invalid value is one :class:`~adaptor.config.ConfigError` naming the option:
``--width: must be ≥ 8, got 4``. So ``--help`` shows the defaults the YAML uses. Only
the options the command line gives reach the model; the others take its defaults (the
same values), so a model may tell them apart (``--preset reference --epochs 2``).
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, is_dataclass, replace
from types import NoneType, UnionType
from typing import Any, Literal, TypeVar

import typer
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from adaptor.config.base import ConfigError, Loc, describe_errors, field_help

F = TypeVar("F", bound=Callable[..., Any])
_CONTEXT = "model_options_ctx"  # the command's click context: which options were given
Model = type[BaseModel]


@dataclass(frozen=True)
class Converted:
    """An option that gives a field in other units, e.g. ``--max-upload-mb`` for a byte count."""

    name: str  # the option's parameter name, e.g. "max_upload_mb"
    type: type
    to_field: Callable[[Any], Any]
    from_field: Callable[[Any], Any]
    help: str


@dataclass(frozen=True)
class OptionSpec:
    """One generated option: the command parameter it fills, and the field of it."""

    param: str  # the command's parameter receiving the model (or the one field's value)
    model: Model
    path: tuple[str, ...]  # the field inside ``model`` (nested models: several names)
    name: str  # the option's Python name (the keyword the command is called with)
    option: str  # how the command line spells it, e.g. --width
    default: Any  # the option's default, as the command line writes it
    to_field: Callable[[Any], Any]  # the option's value → the field's
    single: bool  # the parameter receives this field's value, not the model


@dataclass(frozen=True)
class _FromField:
    model: Model
    field: str
    decls: tuple[str, ...]


def from_field(model: Model, field: str, *decls: str) -> Any:
    """A parameter default: the option of one field of ``model`` (``decls``: its spelling, if
    not the parameter's name), for a command that takes that field alone; the command
    receives the validated value."""
    return _FromField(model, field, decls)


def fields_of(model: Model) -> dict[str, FieldInfo]:
    """The fields of a config model or of a pydantic dataclass."""
    return model.__pydantic_fields__  # type: ignore[attr-defined,no-any-return]


def is_model(annotation: Any) -> bool:
    """Whether ``annotation`` is a config model (a pydantic model or pydantic dataclass)."""
    return isinstance(annotation, type) and (
        issubclass(annotation, BaseModel) or is_dataclass(annotation)
    )


def model_options(fn: F | None = None, *, converted: Mapping[str, Converted] | None = None) -> Any:
    """Decorate a command so its config-model parameters become options (module docstring).

    ``converted`` maps a field name to an option that gives it in other units.
    """
    if fn is None:
        return functools.partial(model_options, converted=converted)
    hints = typing.get_type_hints(fn, include_extras=True)
    params: list[inspect.Parameter] = []
    specs: list[OptionSpec] = []
    for param in inspect.signature(fn).parameters.values():
        annotation = hints.get(param.name, param.annotation)
        if is_model(annotation):
            for path, info in _leaves(annotation):
                conv = (converted or {}).get(path[-1])
                spec = _spec(param.name, annotation, path, info, conv, single=False)
                specs.append(spec)
                help_text = conv.help if conv else field_help(info)
                kind = conv.type if conv else _cli_type(info.annotation)
                params.append(_option(spec, kind, help_text, info.is_required()))
        elif isinstance(param.default, _FromField):
            marker = param.default
            info = fields_of(marker.model)[marker.field]
            spec = _spec(param.name, marker.model, (marker.field,), info, None, single=True)
            if marker.decls:
                spec = replace(spec, option=marker.decls[0])
            specs.append(spec)
            params.append(
                _option(spec, _cli_type(info.annotation), field_help(info), False, marker.decls)
            )
        else:
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation))
    params.append(
        inspect.Parameter(
            _CONTEXT, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=typer.Context
        )
    )
    names = [p.name for p in params]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise TypeError(f"{fn.__name__}: options {clash} come from two places")

    @functools.wraps(fn)
    def command(**kwargs: Any) -> Any:
        ctx = kwargs.pop(_CONTEXT, None)
        for param in dict.fromkeys(s.param for s in specs):
            kwargs[param] = _validated([s for s in specs if s.param == param], kwargs, ctx)
        return fn(**kwargs)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.option_specs = specs  # type: ignore[attr-defined]
    return command


def option_specs(command: Callable[..., Any]) -> list[OptionSpec]:
    """The options :func:`model_options` made for ``command`` (tests compare them)."""
    return list(getattr(command, "option_specs", []))


def cli_value(value: Any) -> Any:
    """A field value as the command line writes it: lists as ``a,b``, mappings as ``k=v,…``."""
    if isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={json.dumps(v)}" for k, v in value.items()) or None
    return value


def _leaves(model: Model, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], FieldInfo]]:
    """Every leaf field of ``model``, nested models flattened, with its path."""
    leaves = []
    for name, info in fields_of(model).items():
        if is_model(info.annotation):
            leaves += _leaves(info.annotation, (*prefix, name))  # type: ignore[arg-type]
        else:
            leaves.append(((*prefix, name), info))
    return leaves


def _spec(
    param: str,
    model: Model,
    path: tuple[str, ...],
    info: FieldInfo,
    conv: Converted | None,
    *,
    single: bool,
) -> OptionSpec:
    value = None if info.is_required() else info.get_default(call_default_factory=True)
    name = param if single else conv.name if conv else path[-1]
    return OptionSpec(
        param=param,
        model=model,
        path=path,
        name=name,
        option="--" + name.replace("_", "-"),
        default=conv.from_field(value) if conv else cli_value(value),
        to_field=conv.to_field if conv else _same,
        single=single,
    )


def _same(value: Any) -> Any:
    return value


def _option(
    spec: OptionSpec, kind: Any, help_text: str, required: bool, decls: tuple[str, ...] = ()
) -> inspect.Parameter:
    """The Typer parameter of ``spec``."""
    default = typer.Option(... if required else spec.default, *decls, help=help_text)
    return inspect.Parameter(
        spec.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind
    )


def _cli_type(annotation: Any) -> Any:
    """How the command line takes a field: lists, mappings and choices as text."""
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, UnionType) and NoneType in args
    inner = next(a for a in args if a is not NoneType) if optional else annotation
    if typing.get_origin(inner) is typing.Annotated:
        inner = typing.get_args(inner)[0]
    if typing.get_origin(inner) in (list, dict, Literal):
        return str | None if optional or typing.get_origin(inner) is dict else str
    return annotation


def _given(ctx: typer.Context | None, name: str) -> bool:
    """Whether the command line gave option ``name`` (True without a context: a direct call
    gives every value)."""
    source = ctx.get_parameter_source(name) if ctx else None
    return source is None or source.name != "DEFAULT"


def _validated(specs: list[OptionSpec], kwargs: dict[str, Any], ctx: typer.Context | None) -> Any:
    """What a command parameter receives: its validated model, or its one field's value."""
    values: dict[str, Any] = {}
    for spec in specs:
        value = kwargs.pop(spec.name)
        if not spec.single and not _given(ctx, spec.name):
            continue  # the model's default (the same, tested), or what a preset fills in
        node = values
        for part in spec.path[:-1]:
            node = node.setdefault(part, {})
        node[spec.path[-1]] = spec.to_field(value)
    model, single = specs[0].model, specs[0].single
    prefix = specs[0].path if single else ()

    def option(loc: Loc) -> str:
        loc = prefix + loc
        return next((s.option for s in specs if loc[: len(s.path)] == s.path), "")

    try:
        if single:
            info = fields_of(model)[prefix[0]]
            adapter: TypeAdapter[Any] = TypeAdapter(typing.Annotated[info.annotation, info])
            return adapter.validate_python(values[prefix[0]])
        return model.model_validate(values)  # type: ignore[attr-defined]
    except ValidationError as err:
        raise ConfigError(describe_errors(err, name=option)) from None
