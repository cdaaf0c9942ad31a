"""Pydantic validation errors -> one line naming the file and the dotted field, for every strict schema.

Target profiles, calibration recipes and bundle manifests are strict pydantic models whose problems must
read as ``FILE: field 'gates.max_map_drop': what is wrong (+N more)``. This module is the plumbing they
share: the exception a cross-field model validator raises to blame the field it is about rather than the
model that ran the check (:class:`Problems`), the walk from a ``ValidationError`` to ``(location,
message)`` pairs (:func:`flatten`), dotted field names (:func:`dotted`), the unknown-key hint
(:func:`unknown_key`) and the one-line summary (:func:`summary`).

How each kind of pydantic error is worded stays with each schema (the ``describe`` callback of
:func:`flatten`): a hand-written YAML profile and a machine-written JSON manifest explain different mistakes.

It lives at the top of the package, beside :mod:`edge_lora.schema`, not inside :mod:`edge_lora.profiles`:
the device side (:mod:`edge_lora.bundle.manifest`) imports it, and should depend neither on the profile
package's internals nor on anything but pydantic (torch-free).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from edge_lora.schema import model_at

__all__ = ["Loc", "Problems", "dotted", "field_names_at", "flatten", "raise_if", "summary", "unknown_key"]

#: A pydantic error location: field names, list indices, and ``"[key]"`` for a bad mapping key.
Loc = tuple[str | int, ...]


class Problems(ValueError):
    """Cross-field problems found by a model validator, each with the dotted field path it concerns.

    Pydantic keeps the raised exception in the error's context, so :func:`flatten` reports the real field
    (``tensorrt.dla_core``) relative to the validating model, instead of the model itself.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))
        self.problems = problems


def raise_if(problems: list[tuple[str, str]]) -> None:
    """Raise :class:`Problems` when a model validator collected any ``(dotted path, message)``."""
    if problems:
        raise Problems(problems)


def dotted(loc: Sequence[str | int]) -> str:
    """``("artifacts", 0, "sha256")`` -> ``artifacts[0].sha256``; a mapping key reads ``conf.x (key)``."""
    out = ""
    for part in loc:
        if part == "[key]":
            out += " (key)"
        elif isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _split_path(path: str) -> Loc:
    """``"fallbacks[1]"`` -> ``("fallbacks", 1)``: a :class:`Problems` path back to a location."""
    return tuple(int(t[1:-1]) if t.startswith("[") else t for t in re.findall(r"[^.\[\]]+|\[\d+\]", path))


def field_names_at(root: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """Sorted field names of the model owning the (unknown) key at ``loc``; empty if there is none."""
    parent = model_at(root, loc[:-1])
    return sorted(parent.model_fields) if parent is not None else []


def unknown_key(key: str | int, allowed: Sequence[str]) -> str:
    """The message for an unknown key: the close match if one is, else the keys allowed there."""
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; allowed here: {', '.join(allowed)}" if allowed else "unknown key"


def flatten(exc: ValidationError, describe: Callable[[Mapping[str, Any]], str]) -> list[tuple[Loc, str]]:
    """Every problem of ``exc`` as ``(location, message)``, unknown keys first.

    A :class:`Problems` raised by a model validator becomes one entry per problem at its own field;
    any other error is worded by ``describe(err)`` (``err`` is one item of ``exc.errors()``).
    """
    out: list[tuple[Loc, str]] = []
    # An unknown key usually explains a "missing" error next to it (precison vs precision): report it first.
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    for err in errors:
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, Problems):
            for path, msg in cause.problems:
                out.append((loc + _split_path(path), msg))
        else:
            out.append((loc, describe(err)))
    return out


def summary(problems: Sequence[tuple[Loc, str]]) -> str:
    """The first problem as ``field 'DOTTED': message``, then ``(+N more)`` when there are others."""
    loc, msg = problems[0]
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"field '{dotted(loc)}': {msg}{more}"
