"""Config files: typed sections (frozen dataclasses validated on construction) built from nested
YAML values and ``section.field=value`` overrides, with errors that name the field."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def int_at_least(name: str, value: Any, minimum: int, meaning: str = "") -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
            f"{name} must be an integer >= {minimum}{meaning}, got {value!r}")


def positive_int(name: str, value: Any) -> None:
    int_at_least(name, value, 1)


def tuple_fields(config: Any, *names: str) -> None:
    """YAML gives lists; the frozen configs hold tuples (hashable, compared by value)."""
    for name in names:
        if isinstance(getattr(config, name), list):
            object.__setattr__(config, name, tuple(getattr(config, name)))


_SECTIONS: dict[tuple[type, str], Any] = {}


def register_sections(sections: dict[tuple[type, str], Any]) -> None:
    """Declare which config dataclass builds the field ``name`` of ``cls``, by ``(cls, name)``: a
    dataclass, or a function of the parent's values that returns one (or None for plain values)."""
    _SECTIONS.update(sections)


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def build_config(cls: type, values: Any, path: str = "") -> Any:
    """The config dataclass ``cls`` from nested plain values, its registered sections built in turn."""
    if not isinstance(values, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        explain = getattr(cls, "explain_unknown", None)  # a section whose layout changed says how
        reason = explain(unknown[0]) if explain else None
        raise ConfigError(reason or f"unknown field {path + '.' if path else ''}{unknown[0]}; known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        section = _SECTIONS.get((cls, name))
        if section is not None and not isinstance(section, type):
            section = section(values)  # a section whose type depends on its parent's values (data on task)
        kwargs[name] = build_config(section, value, f"{path}.{name}" if path else name) if section else value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path or 'config'}: {error}") from None


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


class _YAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading scientific notation without a dot (``1e-3``, ``3e4``) as a
    number the way YAML 1.2 and people do; YAML 1.1 reads it as text."""


def _scientific(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | float:
    text = loader.construct_scalar(node)
    number = float(text)
    mantissa, _, exponent = text.lower().partition("e")
    return int(number) if "." not in mantissa and int(exponent) >= 0 else number  # 1e3 counts, 1e-3 is a rate


_YAMLLoader.add_implicit_resolver(
    "!scientific", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


_YAMLLoader.add_constructor("!scientific", _scientific)


def load_yaml(text: str) -> Any:
    """Plain values of a YAML document (safe: no objects), numbers in scientific notation included."""
    return yaml.load(text, Loader=_YAMLLoader)


def declared_task(path: Path) -> str | None:
    """The ``task`` the YAML file at ``path`` names, without validating it; None if it names none or
    cannot be read (the experiment's loader then says why)."""
    try:
        loaded = load_yaml(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return loaded.get("task") if isinstance(loaded, dict) else None


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "model.core.kind=lstm"]`` → nested dict (values parsed as YAML).

    A later override of the same field replaces an earlier one; a field and a field inside it
    (``train=2`` with ``train.epochs=1``) conflict.
    """
    nested: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {assignment!r} must look like section.field=value")
        try:
            value = load_yaml(text)
        except yaml.YAMLError as error:
            reason = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ConfigError(f"override {assignment!r}: the value is not plain YAML ({reason})") from None
        node = nested
        parts = key.split(".")
        for depth, part in enumerate(parts):
            prefix = ".".join(parts[: depth + 1])
            last = depth == len(parts) - 1
            if part in node and isinstance(node[part], dict) == last:  # a later value of the same field replaces it
                raise ConfigError(f"override {assignment!r} conflicts with another override of {prefix}")
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return nested


def config_layers(path: str | Path | None, overrides: list[str] | None, base: dict[str, Any] | None,
                  sections: str) -> list[dict[str, Any]]:
    """``[base, the YAML file at path, overrides]`` as dicts, the ones given, in that order."""
    layers: list[dict[str, Any]] = [base or {}]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = load_yaml(path.read_text())
        except yaml.YAMLError as error:
            where = getattr(error, "problem_mark", None)
            at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
            raise ConfigError(f"{path} is not valid YAML{at}: {getattr(error, 'problem', None) or error}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not a text file") from None
        if loaded is None:
            raise ConfigError(f"{path} is empty: a config holds at least the sections it sets ({sections})")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections ({sections})")
        layers.append(loaded)
    if overrides:
        layers.append(parse_overrides(overrides))
    return layers
