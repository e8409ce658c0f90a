"""Command-line options generated from options dataclasses, and the dataclasses back from them.

A field documents itself in its metadata, in one place:
``max_batch: int = field(default=64, metadata={"help": "most images per request (more: 413)"})``.
Optional metadata keys: ``metavar``; ``choices``; ``none``, what a ``None`` default means
("auto"). The flag is ``--field-name``, the type comes from the annotation and the help ends
with the dataclass default. Imports only the standard library: ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

Target = argparse.ArgumentParser | argparse._ArgumentGroup


def flag(name: str) -> str:
    """``--field-name`` for the field ``field_name``."""
    return "--" + name.replace("_", "-")


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every field of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def base_type(tp: Any) -> Any:
    """The annotation without its ``| None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        (tp,) = [arg for arg in typing.get_args(tp) if arg is not type(None)]
    return tp


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (``dataclasses.MISSING`` when it has none)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def show_default(f: dataclasses.Field) -> str | None:
    """The default as the help shows it: ``32,64`` for tuples, ``metadata["none"]`` for None."""
    value = field_default(f)
    if value is dataclasses.MISSING or (value is None and "none" not in f.metadata):
        return None
    if value is None:
        return f.metadata["none"]
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def help_text(f: dataclasses.Field) -> str:
    """The field's help followed by ``(default: ...)``."""
    text, shown = f.metadata.get("help", ""), show_default(f)
    return f"{text} (default: {shown})".strip() if shown is not None else text


def _metavar(f: dataclasses.Field, tp: Any) -> str:
    if "metavar" in f.metadata:
        return f.metadata["metavar"]
    if tp is bool:
        return "true|false"
    if typing.get_origin(tp) is tuple:
        return "N,N,..."
    return getattr(tp, "__name__", "VALUE").upper()


def parse_bool(text: str) -> bool:
    """``true``/``false`` (also yes/no, 1/0) as a bool."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(
        str(text).strip().lower()
    )
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def _converter(tp: Any) -> Callable[[str], Any]:
    if tp is bool:
        return parse_bool
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        return lambda text: tuple(item(part) for part in text.strip("[]").split(",") if part)
    return tp


def add_options(
    target: Target,
    cls: type,
    *,
    dest: Callable[[str], str] = lambda name: name,
    as_text: bool = False,
    required: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> None:
    """Add one ``--field-name`` option per field of the dataclass ``cls`` to ``target``.

    Args:
        target: a parser, argument group or mutually exclusive group.
        cls: the options dataclass; help and metavar come from each field's metadata.
        dest: the attribute name of each field's value in the parsed namespace.
        as_text: keep values as given, and leave an option not given out of the namespace
            (for config keys, which the config's own parser checks against a file's values).
        required: fields that must be given.
        exclude: fields that get no option.
    """
    types_ = field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        tp = base_type(types_[f.name])
        kwargs: dict[str, Any] = {"dest": dest(f.name), "help": help_text(f)}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        else:
            kwargs["metavar"] = _metavar(f, tp)
        if tp is bool:
            kwargs.update(nargs="?", const="true")
        if f.name in required:
            kwargs.update(required=True, help=f.metadata.get("help", ""))
        if as_text:
            kwargs["default"] = argparse.SUPPRESS
        else:
            kwargs["type"] = _converter(tp)
            if f.name not in required:
                kwargs["default"] = field_default(f)
        target.add_argument(flag(f.name), **kwargs)


def options_from_args(
    cls: type, args: argparse.Namespace, dest: Callable[[str], str] = lambda name: name
) -> Any:
    """The dataclass ``cls`` built from the options :func:`add_options` added."""
    return cls(**{f.name: getattr(args, dest(f.name)) for f in dataclasses.fields(cls)})
