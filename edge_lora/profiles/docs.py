"""Views of the profiles for people: the ``edge-lora targets`` table, ``--set`` parsing, the field reference.

:func:`fields_reference_markdown` generates the field tables of ``targets/README.md`` from the schema's
descriptions (a test keeps the two equal); :func:`schema_fields` is the walk it is built on.
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from edge_lora.errors import ProfileError
from edge_lora.profiles.loader import list_profiles, load_profile
from edge_lora.profiles.schema import CalibRecipe, TargetProfile
from edge_lora.schema import model_in

__all__ = ["fields_reference_markdown", "parse_override", "profiles_table_rows", "schema_fields"]


def profiles_table_rows() -> list[dict[str, Any]]:
    """One row per shipped profile for ``edge-lora targets``: all values are display strings but imgsz.

    Keys: name, family, backend, precision, fallbacks, imgsz, gates, description.
    """
    rows = []
    for name in list_profiles():
        p = load_profile(name)
        rows.append(
            {
                "name": p.name,
                "family": p.family,
                "backend": p.backend,
                "precision": p.precision,
                "fallbacks": ", ".join(p.fallbacks) if p.fallbacks else "-",
                "imgsz": p.imgsz,
                "gates": p.gates.summary(),
                "description": p.description,
            }
        )
    return rows


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a ``--set KEY=VALUE`` option; VALUE is read as YAML (``30``, ``null``, ``[fp16, fp32]``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ProfileError(f"--set {text!r}: expected KEY=VALUE, e.g. gates.max_p99_ms=30")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ProfileError(f"--set {text!r}: value is not valid YAML: {exc}") from None
    return key.strip(), parsed


def _type_str(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return " | ".join(repr(a) if isinstance(a, str) else str(a) for a in args)
    if origin is list:
        return f"list of {_type_str(args[0])}"
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " | ".join(_type_str(a) for a in rest) + " | null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _field_type_str(field: FieldInfo) -> str:
    # A field whose values are listed when the schema is made (``backend``: the registered backends) reads
    # like a Literal of them.
    extra: dict[str, Any] = {}
    if callable(field.json_schema_extra):
        field.json_schema_extra(extra)  # type: ignore[call-arg]
    if "enum" in extra:
        return " | ".join(repr(v) for v in extra["enum"])
    return _type_str(field.annotation)


def schema_fields(
    model: type[BaseModel] = TargetProfile, prefix: str = ""
) -> list[tuple[str, str, str, str]]:
    """Every field of ``model`` and its sections as ``(dotted path, type, default, description)``."""
    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            default = "defaults" if isinstance(value, BaseModel) else json.dumps(value)
        rows.append((path, _field_type_str(field), default, field.description or ""))
        sub = model_in(field.annotation)
        if sub is not None:
            rows.extend(schema_fields(sub, prefix=f"{path}."))
    return rows


def fields_reference_markdown() -> str:
    """The field reference tables of ``targets/README.md``, generated from the schema descriptions."""
    out = []
    for title, model in (
        ("Target profile (`targets/*.yaml`)", TargetProfile),
        ("Calibration recipe (`calib/*.yaml`)", CalibRecipe),
    ):
        out += [f"### {title}", "", "| Field | Type | Default | Meaning |", "|---|---|---|---|"]
        for path, type_, default, desc in schema_fields(model):
            cells = [f"`{path}`", type_, f"`{default}`", desc]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)
