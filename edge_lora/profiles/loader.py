"""Reading profiles and recipes: shipped names or YAML paths, strict YAML, ``extends`` chains, one-line errors.

A name (``"rpi5"``, ``"default"``) is a file shipped in ``edge_lora.targets`` / ``edge_lora.calib``
(found with :mod:`importlib.resources`, or in the source checkout's ``targets/`` and ``calib/``); anything
that looks like a path is read from disk. YAML is read without object construction and refuses duplicate
keys; a profile's ``extends`` chain is deep-merged before validation, and every problem is blamed on the
file that wrote the offending field.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from edge_lora.errors import ProfileError
from edge_lora.profiles.schema import (
    _NAME_RE,
    FAMILIES,
    FAMILY_DEFAULTS,
    CalibRecipe,
    TargetProfile,
    _validate,
)

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["list_profiles", "list_recipes", "load_profile", "load_recipe"]

_KIND_LABEL = {"targets": "target profile", "calib": "calibration recipe"}


@dataclass(frozen=True)
class _Doc:
    display: str  # how messages name the file
    text: str
    base_dir: Path | None  # folder that relative references resolve against; None inside a zip
    key: str  # identity, for extends cycles


def _repo_dir(kind: str) -> Path:
    # edge_lora/profiles/loader.py -> the checkout that holds edge_lora/, targets/ and calib/
    return Path(__file__).resolve().parents[2] / kind


def _shipped_dir(kind: str) -> Traversable | None:
    """Where shipped ``kind`` files live: the installed package, else the source checkout's folder."""
    try:
        root: Traversable | None = resources.files(f"edge_lora.{kind}")
    except ModuleNotFoundError:
        # Running from a source tree (PYTHONPATH=.): targets/ and calib/ sit beside edge_lora/, and the
        # package-dir mapping that makes them edge_lora.targets exists only once installed.
        root = None
    if root is not None and any(_yaml_names(root)):
        return root
    repo = _repo_dir(kind)
    return repo if repo.is_dir() else root


def _yaml_names(root: Traversable) -> Iterator[str]:
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name.endswith(".yaml") and not entry.name.startswith((".", "_")) and entry.is_file():
            yield entry.name[: -len(".yaml")]


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _is_path_like(ref: str | Path) -> bool:
    if isinstance(ref, Path):
        return True
    return "/" in ref or os.sep in ref or ref.endswith((".yaml", ".yml"))


def _list(kind: str) -> list[str]:
    root = _shipped_dir(kind)
    return sorted(_yaml_names(root)) if root is not None else []


def list_profiles() -> list[str]:
    """Names of the shipped target profiles, sorted."""
    return _list("targets")


def list_recipes() -> list[str]:
    """Names of the shipped calibration recipes, sorted."""
    return _list("calib")


def _unknown(kind: str, name: str) -> ProfileError:
    names = _list(kind)
    choices = names + (list(FAMILIES) if kind == "targets" else [])
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    label = _KIND_LABEL[kind]
    if kind == "targets":
        return ProfileError(
            f"unknown {label} {name!r}{hint}; shipped: {', '.join(names)}; families: {', '.join(FAMILIES)}; "
            "or give a path to a .yaml file"
        )
    return ProfileError(
        f"unknown {label} {name!r}{hint}; shipped: {', '.join(names)}; or give a path to a .yaml file"
    )


def _find(kind: str, ref: str | Path, base_dir: Path | None = None) -> _Doc:
    label = _KIND_LABEL[kind]
    if _is_path_like(ref):
        path = Path(ref).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            hint = ""
            if isinstance(ref, str) and ref.removesuffix(".yaml") in _list(kind) and "/" not in ref:
                hint = f"; shipped {label}s are named without .yaml: {ref.removesuffix('.yaml')!r}"
            raise ProfileError(f"{_display(path)}: no such {label} file{hint}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"{_display(path)}: cannot read {label}: {exc}") from None
        return _Doc(_display(path), text, path.parent, str(path.resolve()))
    name = str(ref)
    root = _shipped_dir(kind)
    if kind == "targets" and name in FAMILIES:
        raise ProfileError(
            f"{name!r} is a family, not a profile: resolve it with resolve_target() (as --target does) "
            f"or name a profile, e.g. {FAMILY_DEFAULTS[name]!r}; shipped: {', '.join(_list(kind))}"
        )
    if root is None or not re.match(_NAME_RE, name):
        raise _unknown(kind, name)
    entry = root / f"{name}.yaml"
    if not entry.is_file():
        raise _unknown(kind, name)
    shown = _display(entry) if isinstance(entry, Path) else str(entry)
    return _Doc(
        shown,
        entry.read_text(encoding="utf-8"),
        entry.parent if isinstance(entry, Path) else None,
        f"shipped:{kind}:{name}",
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which plain YAML loading silently resolves to the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse(doc: _Doc, kind: str) -> dict[str, Any]:
    try:
        data = yaml.load(doc.text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no object construction
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = exc.problem or exc.context or "invalid YAML"
        raise ProfileError(f"{doc.display}: {where}YAML syntax error: {what}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{doc.display}: YAML syntax error: {exc}") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ProfileError(f"{doc.display}: expected a mapping of {_KIND_LABEL[kind]} fields, got {got}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ProfileError(f"{doc.display}: field {bad[0]!r}: keys must be strings")
    return data


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else replaces, null removes.

    Removing (not storing None) means a child's ``max_p99_ms: null`` or ``calibration: null`` resets the
    field to its schema default, whatever the base said. Lists replace whole, never concatenate.
    """
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _has_path(data: Mapping[str, Any], loc: Sequence[str | int]) -> bool:
    node: Any = data
    for part in loc:
        if isinstance(part, int):
            continue
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _load_chain(ref: str | Path, base_dir: Path | None, seen: list[str]) -> list[tuple[_Doc, dict[str, Any]]]:
    """The profile ``ref`` and its ``extends`` ancestors, leaf first."""
    doc = _find("targets", ref, base_dir)
    if doc.key in seen:
        raise ProfileError(f"{doc.display}: field 'extends': cycle ({' -> '.join([*seen, doc.key])})")
    raw = _parse(doc, "targets")
    parent = raw.pop("extends", None)
    chain = [(doc, raw)]
    if parent is None:
        return chain
    if not isinstance(parent, str) or not parent:
        raise ProfileError(
            f"{doc.display}: field 'extends': must be a profile name or a .yaml path, got {parent!r}"
        )
    if "name" not in raw:
        raise ProfileError(
            f"{doc.display}: field 'name': required (a profile that extends another sets its own name)"
        )
    try:
        chain += _load_chain(parent, doc.base_dir, [*seen, doc.key])
    except ProfileError as exc:
        if str(exc).startswith(doc.display):
            raise
        raise ProfileError(f"{doc.display}: field 'extends': {exc}") from None
    return chain


def _check_calibration(profile: TargetProfile, blame: Any) -> None:
    """Cross-file checks: the named calibration recipe loads and suits the profile."""
    if profile.calibration is None:
        return
    try:
        recipe = profile.load_calibration()
    except ProfileError as exc:
        raise ProfileError(f"{blame(('calibration',))}: field 'calibration': {exc}") from None
    assert recipe is not None
    q = profile.quantization
    if q is not None and q.accuracy_aware and recipe.validation_images == 0:
        raise ProfileError(
            f"{blame(('quantization', 'accuracy_aware'))}: field 'quantization.accuracy_aware': needs a "
            f"calibration recipe with validation_images > 0; {recipe.name!r} has 0"
        )
    ov = profile.openvino
    if ov is not None and ov.accuracy_aware and recipe.validation_images == 0:
        raise ProfileError(
            f"{blame(('openvino', 'accuracy_aware'))}: field 'openvino.accuracy_aware': needs a calibration "
            f"recipe with validation_images > 0; {recipe.name!r} has 0"
        )


def load_profile(name_or_path: str | Path) -> TargetProfile:
    """Load and validate a target profile: a shipped name (``"rpi5"``) or a path to a YAML file.

    A string counts as a path when it contains a path separator or ends in ``.yaml``/``.yml``. ``extends``
    chains are resolved by deep merge (see :func:`_deep_merge`) before validation; relative ``extends`` and
    ``calibration`` paths resolve against the file that contains them. Every problem raises ProfileError
    with one line: ``FILE: field 'DOTTED.PATH': what is wrong (+N more)``.
    """
    chain = _load_chain(name_or_path, None, [])
    merged: dict[str, Any] = {}
    for _doc, raw in reversed(chain):
        merged = _deep_merge(merged, raw)

    def blame(loc: Sequence[str | int]) -> str:
        # The file that actually writes the offending field, so a bad base is not blamed on its child.
        for doc, raw in chain:
            if loc and _has_path(raw, loc):
                return doc.display
        return chain[0][0].display

    profile: TargetProfile = _validate(TargetProfile, merged, blame)
    profile._source = chain[0][0].display
    if profile.calibration is not None:
        owner = next((doc for doc, raw in chain if "calibration" in raw), chain[0][0])
        profile._calib_base = owner.base_dir
    _check_calibration(profile, blame)
    return profile


def load_recipe(name_or_path: str | Path, *, base_dir: Path | None = None) -> CalibRecipe:
    """Load and validate a calibration recipe: a shipped name (``"default"``) or a path to a YAML file.

    ``base_dir`` anchors a relative path (the folder of the profile that names the recipe).
    """
    doc = _find("calib", name_or_path, base_dir)
    raw = _parse(doc, "calib")
    recipe: CalibRecipe = _validate(CalibRecipe, raw, lambda _loc: doc.display)
    recipe._source = doc.display
    return recipe
