"""Command-line flags generated from a pydantic settings model, for every command of both tools:
one flag per field, named after it (``max_length`` -> ``--max-length``), documented by its
description with its default in brackets, and checked by the model.

Every flag defaults to None, so the model's own defaults fill in whatever was not given (and a
settings file's values, where a command reads one, are overridden only by the flags given). A
nested settings model is a group of its own, its flags prefixed with the field's name
(``lora.rank`` -> ``--lora-rank``). A value the model refuses raises pydantic's ValidationError;
each tool words it for a person with ``errors.describe_validation_errors``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin

from pydantic import AliasChoices, BaseModel, ValidationError
from pydantic.fields import FieldInfo

Settings = TypeVar("Settings", bound=BaseModel)


@dataclass(frozen=True)
class Flag:
    """How a field is spelled on the command line where ``--field-name VALUE`` won't do:
    ``learning_rate: Annotated[float, Flag("--lr")]``."""

    name: str | None = None  # the flag, e.g. "--lr"; None: --field-name
    positional: bool = False  # an argument without a flag, e.g. the training file
    repeat: bool = False  # a list field whose flag is given once per value
    metavar: str | tuple[str, ...] | None = None
    prefix: str | None = None  # a nested settings field's flags' prefix; None: "field-name-"


def add_settings_arguments(
    parser: argparse.ArgumentParser,
    settings: type[BaseModel],
    heading: str | None = None,
    *,
    fields: Collection[str] | None = None,
    prefix: str = "",
) -> argparse._ArgumentGroup:
    """An argument for every field of `settings` (or those named in `fields`), in a group of
    their own, which is returned. A field without a default is a required flag; a bool field is a
    pair of switches, ``--name`` and ``--no-name``."""
    title = settings.model_config.get("title", settings.__name__)
    group = parser.add_argument_group(heading or f"{title} (defaults in brackets)")
    for name, field in settings.model_fields.items():
        if fields is not None and name not in fields:
            continue
        dest = prefix + name
        flag = _flag(field)
        if is_settings_model(field.annotation):
            add_settings_arguments(parser, field.annotation, prefix=flag_prefix(field, dest))
            continue
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        shown = f" [{default}]" if default not in (None, []) else ""
        help_text = f"{field.description or ''}{shown}".replace("%", "%%")
        kind, choices, nargs = _value_type(field.annotation)
        if flag.positional:
            group.add_argument(dest, type=kind, choices=choices, nargs=nargs, help=help_text)
            continue
        spelled = flag.name or "--" + dest.replace("_", "-")
        options: dict[str, Any] = {"dest": dest, "default": None, "help": help_text}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options.update(type=kind, choices=choices, required=field.is_required())
            metavar = spelled.lstrip("-").replace("-", "_").upper()
            options["metavar"] = flag.metavar or (None if choices else metavar)
            if flag.repeat:
                options["action"] = "append"
            elif nargs:
                options["nargs"] = nargs
        group.add_argument(spelled, *_alias_flags(field, name, prefix), **options)
    return group


def settings_overrides(
    args: argparse.Namespace,
    settings: type[BaseModel],
    *,
    fields: Collection[str] | None = None,
    prefix: str = "",
    partial: bool = False,
) -> dict[str, Any]:
    """The fields of `settings` (or of those named in `fields`) given on the command line. A
    nested settings model counts as given where its flags change it from its defaults; with
    `partial`, as the flags given, even at their defaults (for pydantic-settings, which merges
    them over its variables key by key, so that a flag always beats a variable)."""
    overrides: dict[str, Any] = {}
    for name, field in settings.model_fields.items():
        if fields is not None and name not in fields:
            continue
        dest = prefix + name
        if is_settings_model(field.annotation):
            nested_prefix = flag_prefix(field, dest)
            nested = settings_overrides(
                args, field.annotation, prefix=nested_prefix, partial=partial
            )
            if nested and (partial or not _is_default(field.annotation, nested)):
                overrides[name] = nested
        elif getattr(args, dest, None) is not None:
            overrides[name] = getattr(args, dest)
    return overrides


def settings_from_args(args: argparse.Namespace, settings: type[Settings]) -> Settings:
    """`settings` from its defaults and the flags given (ValidationError if it refuses them)."""
    return settings(**settings_overrides(args, settings))


def _alias_flags(field: FieldInfo, name: str, prefix: str) -> list[str]:
    """A field's other names (`validation_alias=AliasChoices(...)`, e.g. TRL's `cliprange` for
    `clip_range`) as flags of their own: ``--cliprange``."""
    if not isinstance(field.validation_alias, AliasChoices):
        return []
    names = [choice for choice in field.validation_alias.choices if isinstance(choice, str)]
    return ["--" + (prefix + alias).replace("_", "-") for alias in names if alias != name]


def _flag(field: FieldInfo) -> Flag:
    return next((item for item in field.metadata if isinstance(item, Flag)), Flag())


def flag_prefix(field: FieldInfo, dest: str) -> str:
    """What the flags (and variables) of a nested settings field `dest` begin with:
    ``lora`` -> ``lora_`` (``--lora-rank``); ``Flag(prefix="")``: nothing (``--max-batch-size``)."""
    flag = _flag(field)
    return flag.prefix if flag.prefix is not None else f"{dest}_"


def is_settings_model(annotation: Any) -> bool:
    """Whether a field holds a nested settings model (whose fields are flags of their own)."""
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_default(settings: type[BaseModel], values: dict[str, Any]) -> bool:
    try:
        return settings(**values) == settings()
    except ValidationError:
        return False  # validating the whole settings reports it


def _value_type(
    annotation: Any,
) -> tuple[Callable[[str], Any], list[str] | None, int | str | None]:
    """A field's argparse type, choices and nargs (None: one value): int, float, bool, str,
    Path, a Literal, a list or a fixed-length tuple of one of them, or one of those or None."""
    arguments = [argument for argument in get_args(annotation) if argument is not type(None)]
    if get_origin(annotation) is Literal:
        return str, [str(argument) for argument in arguments], None
    if get_origin(annotation) in (list, tuple):
        kind, choices, _ = _value_type(arguments[0])
        return kind, choices, len(arguments) if get_origin(annotation) is tuple else "+"
    if arguments:  # X | None, or list[str] | str: the first
        return _value_type(arguments[0])
    return annotation, None, None
