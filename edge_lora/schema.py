"""Helpers shared by the pydantic schemas (profiles, recipes, bundle manifests) to name a bad field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args

from pydantic import BaseModel


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field annotation (``Foo``, ``Foo | None``, ``list[Foo]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = model_in(arg)
        if found is not None:
            return found
    return None


def model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model that owns the field at pydantic error location ``loc`` (list indices skipped)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        model = model_in(field.annotation)
    return model
