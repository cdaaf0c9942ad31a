"""Calibration image selection: :func:`select_calibration` draws a set from a dataset split by a recipe.

A recipe (``calib/*.yaml``) says how: ``stratified`` (rare classes first, so a defect seen in one image still
calibrates) or ``random``; byte-identical copies are dropped, and ``calibration.json`` records the data YAML
hash, the split's content hash, the resolved recipe, every image with its sha256 and classes, and the class
coverage. :func:`accepting_recipes` says which recipes a split of a given size satisfies. Torch-free.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from edge_lora.errors import DataError, InputError
from edge_lora.export.calibration.record import (
    CALIBRATION_FILE,
    CALIBRATION_KIND,
    CALIBRATION_SCHEMA_VERSION,
    CalibImage,
    CalibrationSet,
    set_identity,
)
from edge_lora.fileio import atomic_write_json, check_output, sha256_file
from edge_lora.profiles import CalibRecipe, list_recipes, load_recipe

__all__ = ["accepting_recipes", "select_calibration"]


def select_calibration(
    data_yaml: str | Path,
    recipe: CalibRecipe | str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
) -> CalibrationSet:
    """Draw a calibration set from ``data_yaml`` by ``recipe`` and write ``out_dir/calibration.json``.

    Args:
        data_yaml: Ultralytics detection data YAML.
        recipe: a :class:`CalibRecipe`, a shipped recipe name (``"default"``) or a recipe YAML path.
        out_dir: folder for ``calibration.json`` (created if needed).
        overwrite: replace an existing ``calibration.json``.

    Selection (deterministic for a given dataset, recipe and ``recipe.seed``):

    * ``dedupe``: images with identical bytes are dropped, keeping the first in path order.
    * ``stratified``: classes with instances are visited rarest first (by number of images), round-robin,
      each time taking the next image (seeded shuffle) that holds the class and is not yet taken; when
      every class is exhausted, the rest is filled from the remaining images (backgrounds included). With
      ``num_images`` at least the number of classes present, every class is represented.
    * ``random``: a seeded uniform sample.

    Returns:
        The written set (images sorted by path).

    Raises:
        DataError: the data YAML or split is unusable, or fewer usable images than ``recipe.min_images``.
        OutputExistsError: ``calibration.json`` exists and not ``overwrite``.
        ProfileError: an unknown recipe name or an invalid recipe file.
    """
    from edge_lora.data.checks import label_path, load_data_yaml

    recipe_obj = recipe if isinstance(recipe, CalibRecipe) else load_recipe(recipe)
    out_dir = Path(out_dir)
    json_path = check_output(out_dir / CALIBRATION_FILE, overwrite, "--out")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file; give a folder for calibration.json")

    spec = load_data_yaml(data_yaml, splits=(recipe_obj.split,), check_labels=True)
    split = recipe_obj.split
    candidates = sorted(spec.splits[split], key=lambda p: p.as_posix())
    hashes: dict[Path, str] = {}
    dropped = 0
    if recipe_obj.dedupe:
        seen: set[str] = set()
        unique = []
        for p in candidates:
            h = hashes[p] = sha256_file(p)
            if h in seen:
                dropped += 1
                continue
            seen.add(h)
            unique.append(p)
        candidates = unique

    if len(candidates) < recipe_obj.min_images:
        after = f" ({dropped} duplicates dropped)" if dropped else ""
        raw = spec.splits[split]
        # The hint counts the split as each shipped recipe would: with or without copies. Without dedupe
        # here the unique count is unknown, so hash now (only on this error path).
        n_unique = len(candidates) if recipe_obj.dedupe else len({sha256_file(p) for p in raw})
        raise DataError(
            f"data YAML {spec.yaml_path}: split '{split}' has {len(candidates)} usable images{after}, fewer "
            f"than the {recipe_obj.min_images} that calibration recipe '{recipe_obj.name}' requires "
            f"(min_images); {_recipe_hint(split, n_unique=n_unique, n_all=len(raw))}"
        )

    classes = {p: _label_classes(label_path(p)) for p in candidates}
    k = min(recipe_obj.num_images, len(candidates))
    rng = random.Random(recipe_obj.seed)
    if recipe_obj.selection == "random":
        chosen = rng.sample(candidates, k)
    else:
        chosen = _stratified(candidates, classes, k, rng)
    chosen.sort(key=lambda p: p.as_posix())

    images = tuple(
        CalibImage(p.resolve(), hashes.get(p) or sha256_file(p), tuple(sorted(classes[p]))) for p in chosen
    )
    coverage = {name: 0 for name in spec.names.values()}
    coverage["background"] = 0
    for im in images:
        for c in im.classes:
            coverage[spec.names[c]] += 1
        if not im.classes:
            coverage["background"] += 1
    available = {name: 0 for name in spec.names.values()}
    for p in candidates:
        for c in classes[p]:
            available[spec.names[c]] += 1

    recipe_resolved = recipe_obj.resolved_dict()
    recipe_sha = recipe_obj.sha256()
    record = {
        "schema_version": CALIBRATION_SCHEMA_VERSION,
        "kind": CALIBRATION_KIND,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": {
            "yaml": spec.yaml_path.as_posix(),
            "yaml_sha256": spec.sha256,
            "split": split,
            "split_content_hash": spec.content_hash(split),
            "names": {str(i): n for i, n in spec.names.items()},
            "split_images": len(spec.splits[split]),
            "duplicates_dropped": dropped,
            "images_per_class": available,
        },
        "recipe": {
            "name": recipe_obj.name,
            "source": recipe_obj.source,
            "resolved": recipe_resolved,
            "sha256": recipe_sha,
        },
        "images": [im.to_dict() for im in images],
        "coverage": coverage,
        "sha256": set_identity(images, recipe_sha),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(json_path, record)
    return CalibrationSet(out_dir, record)


def accepting_recipes(split: str, *, n_unique: int, n_all: int | None = None) -> list[CalibRecipe]:
    """The shipped calibration recipes that accept a ``split`` of this many images, largest first.

    Args:
        split: the dataset split a recipe must draw from to count (a recipe for another split is skipped:
            its image count is not known here).
        n_unique: images in the split after dropping byte-identical copies (what a ``dedupe`` recipe counts).
        n_all: images in the split with copies (what a recipe without ``dedupe`` counts); default
            ``n_unique``.

    Returns:
        Recipes with ``min_images`` <= their count, by descending ``num_images`` (the most thorough first).
    """
    n_all = n_unique if n_all is None else n_all
    ok = []
    for name in list_recipes():
        r = load_recipe(name)
        if r.split == split and r.min_images <= (n_unique if r.dedupe else n_all):
            ok.append(r)
    return sorted(ok, key=lambda r: (-r.num_images, r.name))


def _recipe_hint(split: str, *, n_unique: int, n_all: int) -> str:
    """What to do when a recipe finds too few images in ``split``: name only recipes that would accept it.

    The refused recipe never appears: it is filtered out by the same count that refused it.
    """
    ok = accepting_recipes(split, n_unique=n_unique, n_all=n_all)
    if ok:
        names = ", ".join(f"'{r.name}' (min_images {r.min_images})" for r in ok)
        first = ok[0].name  # the most thorough one that fits, spelled out as the user would type it
        return (
            f"add images, or choose a recipe that accepts them: {names} "
            f"(edge-lora calib --recipe {first}; build/export --set calibration={first})"
        )
    shipped = [r for r in (load_recipe(n) for n in list_recipes()) if r.split == split]
    if not shipped:
        return f"add images (no shipped recipe draws from split '{split}')"
    smallest = min(shipped, key=lambda r: (r.min_images, r.name))
    missing = smallest.min_images - (n_unique if smallest.dedupe else n_all)
    return (
        f"no shipped recipe accepts so few (the smallest, '{smallest.name}', needs {smallest.min_images}: "
        f"add {missing} more images), or write a recipe YAML with a lower min_images "
        "(edge-lora calib --recipe FILE.yaml; build/export --set calibration=FILE.yaml)"
    )


def _label_classes(label: Path) -> frozenset[int]:
    """Class ids in a YOLO label file (already validated by load_data_yaml); empty for a background."""
    if not label.is_file():
        return frozenset()
    ids = set()
    for line in label.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts:
            ids.add(int(float(parts[0])))
    return frozenset(ids)


def _stratified(
    candidates: list[Path], classes: Mapping[Path, frozenset[int]], k: int, rng: random.Random
) -> list[Path]:
    pools: dict[int, list[Path]] = {}
    for p in candidates:
        for c in classes[p]:
            pools.setdefault(c, []).append(p)
    # Rarest class first (fewest images), ties by class id: a defect seen in one image is drawn first.
    order = sorted(pools, key=lambda c: (len(pools[c]), c))
    for c in order:
        rng.shuffle(pools[c])
    cursor = dict.fromkeys(order, 0)
    chosen: list[Path] = []
    taken: set[Path] = set()
    while len(chosen) < k:
        progressed = False
        for c in order:
            pool = pools[c]
            while cursor[c] < len(pool) and pool[cursor[c]] in taken:
                cursor[c] += 1
            if cursor[c] < len(pool):
                p = pool[cursor[c]]
                chosen.append(p)
                taken.add(p)
                progressed = True
                if len(chosen) == k:
                    break
        if not progressed:
            break
    if len(chosen) < k:  # every labelled image is taken: fill with the rest (backgrounds)
        rest = [p for p in candidates if p not in taken]
        rng.shuffle(rest)
        chosen.extend(rest[: k - len(chosen)])
    return chosen
