"""Calibration sets for INT8 quantization: selection, a hash-checked record, and a streaming reader.

Three steps, three functions:

* :func:`select_calibration` draws images from a dataset split the way a recipe (``calib/*.yaml``) says
  (``stratified``: rare classes first, so a defect seen in one image still calibrates; or ``random``),
  drops byte-identical copies, and writes ``calibration.json``: the data YAML hash, the split's content
  hash, the resolved recipe, every image with its sha256 and classes, and the class coverage.
* :meth:`CalibrationSet.load` reads that record back and re-hashes every image, so a set that no longer
  matches its images is refused instead of silently calibrating on something else.
* :meth:`CalibrationSet.batches` streams NCHW float32 batches through the one runtime preprocessing
  (:func:`edge_lora.runtime.prepost.preprocess`), reading one batch of images at a time. Adapters:
  :class:`OrtCalibrationReader` (ONNX Runtime's ``CalibrationDataReader`` protocol) and
  :meth:`CalibrationSet.iterable` (re-iterable, for ``nncf.Dataset``).

Quantized artifacts are only valid for the exact weights and calibration set they were built from:
:func:`calibration_key` names that combination and :func:`assert_fresh` refuses a stale one.

Torch-free (numpy, OpenCV); ONNX Runtime and NNCF are never imported here.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_lora.errors import DataError, InputError
from edge_lora.fileio import atomic_write_json, check_output, sha256_bytes, sha256_file, sha256_json
from edge_lora.profiles import CalibRecipe, list_recipes, load_recipe

__all__ = [
    "CALIBRATION_FILE",
    "CALIBRATION_SCHEMA_VERSION",
    "CalibImage",
    "CalibrationBatches",
    "CalibrationSet",
    "OrtCalibrationReader",
    "StaleCalibrationError",
    "accepting_recipes",
    "assert_fresh",
    "calibration_key",
    "calibration_record",
    "select_calibration",
]

CALIBRATION_SCHEMA_VERSION = 1
CALIBRATION_FILE = "calibration.json"
_KIND = "edge-lora-calibration"
_KEY_VERSION = 1


class StaleCalibrationError(InputError):
    """A quantized artifact or cache was built from other weights, another calibration set or profile."""


@dataclass(frozen=True)
class CalibImage:
    """One calibration image: where it is, its content hash and the class ids its label holds."""

    path: Path
    sha256: str
    classes: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path.as_posix(), "sha256": self.sha256, "classes": list(self.classes)}


# --------------------------------------------------------------------------------------------------------
# The set
# --------------------------------------------------------------------------------------------------------


class CalibrationSet:
    """A selected, hash-recorded list of calibration images (the content of ``calibration.json``).

    Build one with :func:`select_calibration` or :meth:`load`; do not construct it directly.

    Attributes:
        directory: the folder holding ``calibration.json``.
        images: the images, sorted by path.
        record: the full ``calibration.json`` content.
        sha256: identity of the set: hash of the image content hashes (in order) and the recipe hash. It
            does not depend on where the dataset lies, so a moved dataset is the same set.
    """

    def __init__(self, directory: Path, record: dict[str, Any]):
        self.directory = Path(directory)
        self.record = record
        self.images: tuple[CalibImage, ...] = tuple(
            CalibImage(Path(d["path"]), str(d["sha256"]), tuple(int(c) for c in d["classes"]))
            for d in record["images"]
        )
        self.sha256: str = record["sha256"]

    # ---- basic views ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"CalibrationSet({len(self)} images, sha256={self.sha256[:12]}…, {self.directory})"

    @property
    def paths(self) -> list[Path]:
        """Image paths in calibration order."""
        return [im.path for im in self.images]

    @property
    def recipe(self) -> dict[str, Any]:
        """The resolved recipe the set was drawn with."""
        return dict(self.record["recipe"]["resolved"])

    @property
    def recipe_sha256(self) -> str:
        return str(self.record["recipe"]["sha256"])

    @property
    def coverage(self) -> dict[str, int]:
        """Selected images per class name (plus ``background``: images without boxes)."""
        return dict(self.record["coverage"])

    @property
    def json_path(self) -> Path:
        return self.directory / CALIBRATION_FILE

    # ---- load / verify --------------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | Path, *, verify: bool = True) -> CalibrationSet:
        """Read ``directory/calibration.json`` (or the JSON file itself) and re-check every image's sha256.

        Raises:
            DataError: the record is missing, malformed, of another schema, tampered with (its identity hash
                does not match its content), or an image is missing or changed since selection.
        """
        path = Path(directory)
        json_path = path if path.suffix == ".json" else path / CALIBRATION_FILE
        if not json_path.is_file():
            raise DataError(
                f"no calibration set at {path}: {json_path.name} not found; create one with edge-lora calib"
            )
        try:
            record = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{json_path} is not readable JSON: {exc}") from None
        if not isinstance(record, dict) or record.get("kind") != _KIND:
            raise DataError(f"{json_path} is not an edge-lora calibration record")
        if record.get("schema_version") != CALIBRATION_SCHEMA_VERSION:
            raise DataError(
                f"{json_path} has schema_version {record.get('schema_version')!r}; this edge-lora reads "
                f"{CALIBRATION_SCHEMA_VERSION}; re-create it with edge-lora calib"
            )
        try:
            calib = cls(json_path.parent, record)
            expected = _identity(calib.images, calib.recipe_sha256)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{json_path} is malformed ({type(exc).__name__}: {exc})") from None
        if expected != calib.sha256:
            raise DataError(
                f"{json_path} was edited after it was written (its sha256 does not match its image list); "
                "re-create it with edge-lora calib"
            )
        if verify:
            calib.verify()
        return calib

    def verify(self) -> None:
        """Re-hash every image; raise :class:`DataError` naming the first missing or changed one."""
        for im in self.images:
            if not im.path.is_file():
                raise DataError(
                    f"calibration image {im.path} is missing (recorded in {self.json_path}); restore it or "
                    "re-create the calibration set with edge-lora calib --overwrite"
                )
            actual = sha256_file(im.path)
            if actual != im.sha256:
                raise DataError(_changed_message(im, actual, self.json_path))

    # ---- streaming ------------------------------------------------------------------------------------

    def batches(
        self,
        imgsz: int | Sequence[int],
        batch: int = 1,
        *,
        drop_last: bool = False,
        start: int = 0,
        stop: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield ``(B, 3, H, W)`` float32 RGB batches scaled to [0, 1], letterboxed like the runtime does.

        Images are read one batch at a time and each read is checked against its recorded sha256, so what
        calibrates is exactly the recorded set. The last batch is smaller unless ``drop_last``; use
        ``drop_last=True`` for a model with a fixed batch dimension above 1. ``start``/``stop`` select
        batches by index (only those images are read).

        Raises:
            InputError: ``batch`` < 1. DataError: an image is missing, changed or undecodable.
        """
        from edge_lora.runtime.prepost import preprocess

        if batch < 1:
            raise InputError(f"calibration batch must be >= 1, got {batch}")
        first = start * batch
        end = len(self.images) if stop is None else min(len(self.images), stop * batch)
        for offset in range(first, end, batch):
            chunk = self.images[offset : offset + batch]
            if drop_last and len(chunk) < batch:
                return
            arrays, _ = preprocess([self._read(im) for im in chunk], imgsz)
            yield arrays

    def num_batches(self, batch: int = 1, *, drop_last: bool = False) -> int:
        """How many batches :meth:`batches` yields."""
        return len(self.images) // batch if drop_last else -(-len(self.images) // batch)

    def iterable(
        self, imgsz: int | Sequence[int], batch: int = 1, *, drop_last: bool = False
    ) -> CalibrationBatches:
        """A re-iterable, sized view of :meth:`batches` (each ``iter()`` restarts; for ``nncf.Dataset``)::

        nncf.Dataset(calib.iterable(imgsz))  # items are (1, 3, H, W) float32 arrays
        """
        return CalibrationBatches(self, imgsz, batch, drop_last)

    def _read(self, im: CalibImage) -> np.ndarray:
        try:
            data = im.path.read_bytes()
        except OSError as exc:
            raise DataError(f"calibration image {im.path} cannot be read ({exc.strerror or exc})") from None
        actual = sha256_bytes(data)
        if actual != im.sha256:
            raise DataError(_changed_message(im, actual, self.json_path))
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"calibration image {im.path} cannot be decoded by OpenCV")
        return img


class CalibrationBatches:
    """Re-iterable batches of a :class:`CalibrationSet` (see :meth:`CalibrationSet.iterable`)."""

    def __init__(self, calib: CalibrationSet, imgsz: int | Sequence[int], batch: int, drop_last: bool):
        if batch < 1:
            raise InputError(f"calibration batch must be >= 1, got {batch}")
        self.calib, self.imgsz, self.batch, self.drop_last = calib, imgsz, batch, drop_last

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.calib.batches(self.imgsz, self.batch, drop_last=self.drop_last)

    def __len__(self) -> int:
        return self.calib.num_batches(self.batch, drop_last=self.drop_last)


class OrtCalibrationReader:
    """ONNX Runtime calibration reader over a :class:`CalibrationSet` (``{input_name: batch}`` dicts).

    Satisfies ``onnxruntime.quantization.CalibrationDataReader`` structurally (ONNX Runtime checks for a
    callable ``get_next``), so onnxruntime is not imported here. Batches are produced lazily; ONNX Runtime's
    calibrators decide what to keep.

    Args:
        calib: the calibration set.
        input_name: the model's image input (``"images"`` for Ultralytics exports).
        imgsz: model input size (int or (h, w)).
        batch: images per feed; must equal the model's batch dimension when it is fixed (then a
            smaller last batch is dropped).
    """

    def __init__(self, calib: CalibrationSet, input_name: str, imgsz: int | Sequence[int], batch: int = 1):
        self.calib = calib
        self.input_name = input_name
        self.imgsz = imgsz
        self.batch = batch
        self._drop_last = batch > 1
        if calib.num_batches(batch, drop_last=self._drop_last) == 0:
            raise InputError(
                f"calibration set {calib.directory} has {len(calib)} images, fewer than one batch of {batch}"
            )
        self._it: Iterator[np.ndarray] | None = None
        self._range: tuple[int, int | None] = (0, None)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            start, stop = self._range
            self._it = self.calib.batches(
                self.imgsz, self.batch, drop_last=self._drop_last, start=start, stop=stop
            )
        arr = next(self._it, None)
        return None if arr is None else {self.input_name: arr}

    def rewind(self) -> None:
        """Start again from the first batch (of the range, if one is set)."""
        self._it = None

    def set_range(self, start_index: int, end_index: int) -> None:
        """Feed only batches ``start_index`` to ``end_index - 1`` from now on (ONNX Runtime's strided
        calibration calls this once per chunk)."""
        self._range = (start_index, end_index)
        self._it = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item

    def __len__(self) -> int:
        return self.calib.num_batches(self.batch, drop_last=self._drop_last)


# --------------------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------------------


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
        "kind": _KIND,
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
        "sha256": _identity(images, recipe_sha),
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


def _identity(images: Sequence[CalibImage], recipe_sha256: str) -> str:
    return sha256_json({"images": [im.sha256 for im in images], "recipe": recipe_sha256})


def _changed_message(im: CalibImage, actual: str, json_path: Path) -> str:
    return (
        f"calibration image {im.path} changed since the set was selected (sha256 {actual[:12]}…, recorded "
        f"{im.sha256[:12]}… in {json_path}); re-create the set with edge-lora calib --overwrite"
    )


# --------------------------------------------------------------------------------------------------------
# Staleness
# --------------------------------------------------------------------------------------------------------


def calibration_key(model_sha256: str, calib_sha256: str, profile_sha256: str) -> str:
    """Identity of a calibration *result* (a quantized artifact, a range cache): hex sha256 over the merged
    weights' sha256, the calibration set's sha256 and the target profile's sha256."""
    for name, value in (("model", model_sha256), ("calibration", calib_sha256), ("profile", profile_sha256)):
        if not isinstance(value, str) or not value:
            raise InputError(f"calibration_key: {name} sha256 must be a non-empty string, got {value!r}")
    return sha256_json(
        {"v": _KEY_VERSION, "model": model_sha256, "calibration": calib_sha256, "profile": profile_sha256}
    )


def calibration_record(model_sha256: str, calib_sha256: str, profile_sha256: str) -> dict[str, str]:
    """What an artifact records about its calibration (the sidecar's ``calibration`` entry)."""
    return {
        "model_sha256": model_sha256,
        "calibration_sha256": calib_sha256,
        "profile_sha256": profile_sha256,
        "key": calibration_key(model_sha256, calib_sha256, profile_sha256),
    }


def assert_fresh(
    recorded: Mapping[str, Any],
    model_sha256: str,
    calib_sha256: str,
    profile_sha256: str | None = None,
    *,
    what: str = "the quantized artifact",
) -> None:
    """Refuse a calibration result built from other weights, another calibration set (or profile).

    Args:
        recorded: a :func:`calibration_record`, or an artifact sidecar dict holding one under
            ``"calibration"``.
        model_sha256: sha256 of the merged checkpoint the caller is about to use.
        calib_sha256: sha256 of the calibration set (``CalibrationSet.sha256``).
        profile_sha256: the target profile's sha256; None skips that check.
        what: how to name the artifact in the message.

    Raises:
        StaleCalibrationError: with a message that says which input changed and to rebuild.
    """
    rec = recorded.get("calibration") if isinstance(recorded.get("calibration"), Mapping) else recorded
    if not isinstance(rec, Mapping) or "model_sha256" not in rec or "calibration_sha256" not in rec:
        raise StaleCalibrationError(
            f"stale calibration: {what} records no calibration (not an INT8 artifact, or written by an older "
            "edge-lora); rebuild it"
        )
    problems = []
    if rec["model_sha256"] != model_sha256:
        problems.append(
            f"it was built from model weights {str(rec['model_sha256'])[:12]}…, not the current "
            f"{model_sha256[:12]}…"
        )
    if rec["calibration_sha256"] != calib_sha256:
        problems.append(
            f"it was calibrated on set {str(rec['calibration_sha256'])[:12]}…, not the current "
            f"{calib_sha256[:12]}…"
        )
    if profile_sha256 is not None and rec.get("profile_sha256") not in (None, profile_sha256):
        problems.append(
            f"it was built for profile {str(rec['profile_sha256'])[:12]}…, not the current {profile_sha256[:12]}…"
        )
    if (
        not problems
        and rec.get("key") is not None
        and profile_sha256 is not None
        and rec["key"] != calibration_key(model_sha256, calib_sha256, profile_sha256)
    ):
        problems.append("its recorded calibration key does not match (edited sidecar?)")
    if problems:
        raise StaleCalibrationError(
            f"stale calibration: {what}: {'; '.join(problems)}; rebuild it (edge-lora export --overwrite)"
        )
