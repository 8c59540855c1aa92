"""Every command-line option of a settings model is also an environment variable, grouped options
included: a pydantic-settings source (``OptionSettings`` is the base class that installs it).

pydantic-settings gives each field one variable, the prefix and the field's name (JSON for a list
or a group such as ``batching``). A grouped option's flag is spelled without its group, though
(``--max-batch-size`` sets ``batching.max_batch_size``), so this source adds a variable of the
flag's spelling for each, ``REWARD_SERVICE_MAX_BATCH_SIZE``, and one for each option of a dict
field that layers another model's fields (``LayerOptions``). Who wins: the flags given, then the
per-option variable, then the group's JSON (key by key, as pydantic-settings' own nested
variables override their JSON), then the defaults.

A variable with the prefix that names no option, or whose value its option refuses, stops the
settings with a ``SettingsError`` naming the variable, rather than being ignored."""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, get_args

from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsError,
)

from reward_service.flags import flag_prefix, is_settings_model

# Kubernetes gives every pod <SERVICE>_SERVICE_HOST, <SERVICE>_PORT=tcp://..., and the like for
# each Service in its namespace (unless the pod sets enableServiceLinks: false): a Service named
# reward-service collides with our prefix.
_SERVICE_LINK_NAME = re.compile(r"SERVICE_(HOST|PORT)|PORT_\d+_", re.IGNORECASE)
_SERVICE_LINK_VALUE = re.compile(r"(tcp|udp|sctp)://", re.IGNORECASE)


@dataclass(frozen=True)
class LayerOptions:
    """Marks a dict field that holds a partial `model` (every field optional: a layer over other
    layers), whose `fields` are options of their own, each a variable PREFIX + FIELD. `spelled`:
    (option, field, parse) for an option with a syntax of its own, a variable PREFIX + OPTION
    whose text `parse` turns into the field's value."""

    model: type[BaseModel]
    fields: tuple[str, ...]
    spelled: tuple[tuple[str, str, Callable[[str], Any]], ...] = ()


@dataclass(frozen=True)
class Variable:
    """One environment variable a settings model reads."""

    name: str  # e.g. REWARD_SERVICE_MAX_BATCH_SIZE
    path: tuple[str, ...]  # where its value goes, e.g. ("batching", "max_batch_size")
    field: FieldInfo  # what its value must be
    # The value as the settings take it; ValueError (pydantic's ValidationError) if refused.
    check: Callable[[Any], Any]
    parse: Callable[[str], Any] | None = None  # for a syntax of its own; else JSON or plain text


@functools.cache
def variables(settings: type[BaseSettings]) -> tuple[Variable, ...]:
    """Every variable `settings` reads: one per field, and one per grouped option."""
    prefix = settings.model_config.get("env_prefix", "").upper()
    found = []
    for name, field in settings.model_fields.items():
        layer = next((item for item in field.metadata if isinstance(item, LayerOptions)), None)
        check = layer.model.model_validate if layer else _field_check(field)
        found.append(Variable(prefix + name.upper(), (name,), field, check))
        if is_settings_model(field.annotation):
            found += _grouped(prefix, flag_prefix(field, name), (name,), field.annotation)
        if layer:
            found += _layered(prefix, name, layer)
    return tuple(found)


def _grouped(
    prefix: str, dest_prefix: str, path: tuple[str, ...], model: type[BaseModel]
) -> list[Variable]:
    """A nested model's options, named as their flags' destinations are (flags.flag_prefix)."""
    found = []
    for name, field in model.model_fields.items():
        dest = dest_prefix + name
        found.append(Variable(prefix + dest.upper(), (*path, name), field, _field_check(field)))
        if is_settings_model(field.annotation):
            found += _grouped(prefix, flag_prefix(field, dest), (*path, name), field.annotation)
    return found


def _layered(prefix: str, name: str, layer: LayerOptions) -> list[Variable]:
    def check(key: str) -> Callable[[Any], Any]:
        # As the flag gives it: the field's value in Python types ("2.5" -> 2.5).
        return lambda value: layer.model.model_validate({key: value}).model_dump()[key]

    found = [
        Variable(prefix + key.upper(), (name, key), layer.model.model_fields[key], check(key))
        for key in layer.fields
    ]
    for option, key, parse in layer.spelled:
        field = layer.model.model_fields[key]
        found.append(Variable(prefix + option.upper(), (name, key), field, check(key), parse))
    return found


def _field_check(field: FieldInfo) -> Callable[[Any], Any]:
    """Validates one value as `field` takes it; a nested model key by key, since its other keys
    may come from other variables or flags (its cross-field checks run on the whole settings)."""
    if not is_settings_model(field.annotation):
        annotation = (
            Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
        )
        return TypeAdapter(annotation).validate_python
    model = field.annotation
    checks = {name: _field_check(option) for name, option in model.model_fields.items()}

    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object of {', '.join(checks)}")
        for key, item in value.items():
            if key not in checks:
                raise ValueError(f"{key!r} is not one of its options ({', '.join(checks)})")
            try:
                checks[key](item)
            except ValueError as error:
                raise ValueError(f"{key}: {_reason(error)}") from None
        return value

    return check


class OptionVariables(EnvSettingsSource):
    """pydantic-settings' environment source, with a variable for every grouped option and an
    error naming the variable for one it can't use. `also_read`: variables with the prefix that
    something other than the settings reads (so not refused as unknown)."""

    def __init__(self, settings_cls: type[BaseSettings], *, also_read: Collection[str] = ()):
        super().__init__(settings_cls)
        self.also_read = {self._apply_case_sensitive(name) for name in also_read}

    def __call__(self) -> dict[str, Any]:
        known = {
            self._apply_case_sensitive(item.name): item for item in variables(self.settings_cls)
        }
        unknown = self._unknown(known)
        problems = [_unknown_problem(name, known) for name in unknown]
        service_links = any(
            _SERVICE_LINK_NAME.match(name[len(self.env_prefix) :]) for name in unknown
        )
        grouped: list[tuple[tuple[str, ...], Any]] = []
        for key, variable in known.items():
            text = self.env_vars.get(key)
            if text is None:
                continue
            try:
                value = variable.check(self._decoded(variable, text))
            except ValueError as error:
                problems.append(f"{_shown(variable, text)}: {_reason(error, variable)}")
                service_links = service_links or bool(_SERVICE_LINK_VALUE.match(text))
                continue
            if len(variable.path) > 1:
                grouped.append((variable.path, value))
        if problems:
            raise SettingsError("; ".join(problems) + (_SERVICE_LINK_HINT if service_links else ""))
        values = super().__call__()  # the fields' own variables, groups' JSON decoded
        # Shorter paths first, so that the more specific variable is set last and wins.
        for path, value in sorted(grouped, key=lambda item: len(item[0])):
            target = values
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = value
        return values

    def _unknown(self, known: Collection[str]) -> list[str]:
        """The variables with the prefix that no option reads, nor anything in `also_read`."""
        prefix = self._apply_case_sensitive(self.env_prefix)
        if not prefix:
            return []
        return sorted(
            name
            for name in self.env_vars
            if name.startswith(prefix) and name not in known and name not in self.also_read
        )

    def _decoded(self, variable: Variable, text: str) -> Any:
        if variable.parse is not None:
            return variable.parse(text)
        if self.field_is_complex(variable.field):
            try:
                return self.decode_complex_value(variable.name, variable.field, text)
            except json.JSONDecodeError as error:
                raise ValueError(f"not valid JSON ({error})") from None
        return text


_SERVICE_LINK_HINT = (
    " (Kubernetes sets such variables for a Service of the same name: set "
    "enableServiceLinks: false in the pod's spec, or name the Service otherwise)"
)


def _shown(variable: Variable, text: str) -> str:
    if SecretStr in (variable.field.annotation, *get_args(variable.field.annotation)):
        return variable.name
    return f"{variable.name}={text[:80]!r}"


def _unknown_problem(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"{name.upper()} is not a setting" + (
        f" (did you mean {close[0].upper()}?)" if close else ""
    )


def _reason(error: ValueError, variable: Variable | None = None) -> str:
    """What pydantic refused, in one line; a grouped option's own name left out of it."""
    if not isinstance(error, ValidationError):
        return str(error)
    parts = []
    for problem in error.errors():
        location = list(problem["loc"])
        if variable is not None and location[:1] == [variable.path[-1]] and len(variable.path) > 1:
            location = location[1:]
        message = problem["msg"].removeprefix("Value error, ")
        parts.append(".".join(map(str, location)) + ": " + message if location else message)
    return "; ".join(parts)


class OptionSettings(BaseSettings):
    """Settings whose every option is also a variable (see the module). `other_variables`: the
    ones with the prefix that are read elsewhere."""

    other_variables: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        variables_source = OptionVariables(settings_cls, also_read=cls.other_variables)
        return init_settings, variables_source, dotenv_settings, file_secret_settings
