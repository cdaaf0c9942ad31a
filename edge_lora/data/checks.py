"""Validate an Ultralytics detection data YAML before any training starts.

Ultralytics finds most dataset problems late (after model build, sometimes mid-epoch) and reports them as
multi-line tracebacks or silently drops the offending images. :func:`load_data_yaml` resolves the YAML the
way ``ultralytics.data.utils.check_det_dataset`` and ``BaseDataset.get_img_files`` do and fails early with
one :class:`~edge_lora.errors.DataError` line that names the file and says what to fix.

Resolution rules (mirroring Ultralytics 8.4):

- root: the ``path:`` key if present, else the YAML's folder. A relative ``path:`` is resolved against the
  YAML's folder. Ultralytics instead takes it relative to the working directory if that exists there and
  otherwise under its ``DATASETS_DIR`` setting; we choose the YAML's folder so the result does not depend
  on where the command runs. Write an absolute ``path:`` (or none) to get the same answer from both.
- a split value (``train:``, ``val:``...) is a folder (images found recursively), a text file listing one
  image per line, or a list of those, each relative to the root. A string value starting with ``../`` that
  does not exist is retried without it, as Ultralytics does.
- in a list file, a line starting with ``./`` is relative to the list file's folder; another relative line
  is taken relative to the root (Ultralytics takes it relative to the working directory, which is the
  same thing only when training runs from the root; prefer ``./`` lines).
- the label of ``.../images/x/a.jpg`` is ``.../labels/x/a.txt``: the last ``/images/`` component becomes
  ``/labels/`` and the suffix ``.txt``. An image without a label file is a background image (allowed).

Torch-free on purpose (numpy, OpenCV, PyYAML only) so it runs on the device side too.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from edge_lora.errors import DataError
from edge_lora.fileio import sha256_file, sha256_json

# The same set as ultralytics.data.utils.IMG_FORMATS, so image counts match what Ultralytics trains on.
IMG_FORMATS = frozenset(
    {"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp"}
)
# Ultralytics accepts coordinates up to 1.01 (and down to -0.01 for box centres); so do we.
COORD_TOL = 0.01


@dataclass(frozen=True)
class SplitCounts:
    """What one split holds.

    ``instances`` maps every class id 0..nc-1 to its number of boxes; it is None when labels were not
    checked (``check_labels=False``), and then ``backgrounds`` counts only images without a label file.
    """

    images: int
    labels: int  # images that have a label file
    backgrounds: int  # images with no boxes (no label file, or an empty one)
    instances: dict[int, int] | None

    @property
    def total_instances(self) -> int:
        """Number of boxes in the split (0 when labels were not checked)."""
        return sum(self.instances.values()) if self.instances else 0


@dataclass(frozen=True)
class DataSpec:
    """A validated data YAML: resolved root, class names and the image list of each requested split."""

    yaml_path: Path
    root: Path
    names: dict[int, str]
    nc: int
    splits: dict[str, list[Path]]
    counts: dict[str, SplitCounts]
    sha256: str  # of the YAML file's bytes

    def labels(self, split: str) -> list[Path]:
        """Label file path of each image of ``split`` (whether or not the file exists)."""
        return [label_path(p) for p in self._split(split)]

    def content_hash(self, split: str) -> str:
        """Hex sha256 over the sorted (image path relative to root, label file sha256) pairs of ``split``.

        Changes when an image is added, removed or renamed, or a label is edited; image pixels are not
        read (too slow for a cache key). A missing label file hashes as the empty string.
        """
        pairs = []
        for img in self._split(split):
            lbl = label_path(img)
            pairs.append((self._rel(img), sha256_file(lbl) if lbl.is_file() else ""))
        return sha256_json(sorted(pairs))

    def _split(self, split: str) -> list[Path]:
        if split not in self.splits:
            raise KeyError(
                f"split {split!r} was not loaded from {self.yaml_path}; loaded: {list(self.splits)}"
            )
        return self.splits[split]

    def _rel(self, p: Path) -> str:
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:  # listed from outside the root: the absolute path is the stable name
            return p.as_posix()


def label_path(image: str | Path) -> Path:
    """Label file of an image, by Ultralytics' rule (``img2label_paths``)."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(os.fspath(image).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt")


def class_names_equal(a: Sequence[str] | Mapping[Any, Any], b: Sequence[str] | Mapping[Any, Any]) -> bool:
    """True when two class-name tables (list or {id: name}) name the same classes in the same order."""
    try:
        return _normalize_names(a, "a") == _normalize_names(b, "b")
    except DataError:
        return False


def load_data_yaml(
    path: str | Path,
    *,
    splits: Iterable[str] = ("train", "val"),
    check_labels: bool = True,
    check_images: bool = False,
) -> DataSpec:
    """Load and validate a detection data YAML; see the module docstring for the resolution rules.

    Args:
        path: the data YAML.
        splits: the split keys that must be present and are resolved to image lists.
        check_labels: parse every label file (5 numbers a line, class id < nc, coordinates in [0, 1]).
        check_images: also decode every image with OpenCV (slow; off by default).

    Raises:
        DataError: with one line naming the offending file or key and what to do about it.
    """
    yaml_path = Path(path)
    if not yaml_path.exists():
        raise DataError(f"data YAML not found: {yaml_path}")
    if not yaml_path.is_file():
        raise DataError(f"data YAML {yaml_path} is a folder; pass the .yaml file inside it")
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or type(e).__name__
        raise DataError(f"data YAML {yaml_path} is not valid YAML{where}: {what}; fix the syntax") from None
    except UnicodeDecodeError:
        raise DataError(f"data YAML {yaml_path} is not UTF-8 text; save it as UTF-8") from None
    if not isinstance(data, dict):
        raise DataError(
            f"data YAML {yaml_path} must be a mapping with keys path/train/val/names, "
            f"got {type(data).__name__}"
        )

    if data.get("names") is None:
        raise DataError(f"data YAML {yaml_path} has no 'names:'; add e.g. names: {{0: scratch, 1: hole}}")
    names = _normalize_names(data["names"], f"data YAML {yaml_path}")
    if data.get("nc") is not None and not _int_equal(data["nc"], len(names)):
        raise DataError(f"data YAML {yaml_path}: 'nc: {data['nc']}' does not match {len(names)} 'names:'")

    root = _resolve_root(data.get("path"), yaml_path)
    image_lists: dict[str, list[Path]] = {}
    counts: dict[str, SplitCounts] = {}
    for split in splits:
        value = data.get(split)
        if not value and split == "val":
            value = data.get("validation")  # Ultralytics renames 'validation' to 'val'
        if not value:
            raise DataError(
                f"data YAML {yaml_path} has no '{split}:' key; add {split}: images/{split} "
                "(a folder, a .txt image list, or a list of those)"
            )
        images = _split_images(value, split, root, yaml_path)
        image_lists[split] = images
        counts[split] = _check_split(images, len(names), check_labels, check_images)

    return DataSpec(
        yaml_path=yaml_path.resolve(),
        root=root,
        names=names,
        nc=len(names),
        splits=image_lists,
        counts=counts,
        sha256=sha256_file(yaml_path),
    )


def _int_equal(value: Any, n: int) -> bool:
    try:
        return float(value) == n  # Ultralytics accepts integer-like values such as '3' or 3.0
    except (TypeError, ValueError):
        return False


def _normalize_names(names: Any, where: str) -> dict[int, str]:
    """A list or {id: name} mapping -> {0: name, ..., nc-1: name}, ids contiguous from 0."""
    if isinstance(names, (list, tuple)):
        out = {i: str(v) for i, v in enumerate(names)}
    elif isinstance(names, Mapping):
        out = {}
        for k, v in names.items():
            try:
                out[int(k)] = str(v)
            except (TypeError, ValueError):
                raise DataError(f"{where}: class id {k!r} in 'names:' is not an integer") from None
    else:
        raise DataError(
            f"{where}: 'names:' must be a list or a mapping {{id: name}}, got {type(names).__name__}"
        )
    if not out:
        raise DataError(f"{where}: 'names:' is empty; at least one class is required")
    if sorted(out) != list(range(len(out))):
        raise DataError(f"{where}: 'names:' ids must be 0..{len(out) - 1} without gaps, got {sorted(out)}")
    return dict(sorted(out.items()))


def _resolve_root(value: Any, yaml_path: Path) -> Path:
    if value is None or value == "":
        return yaml_path.parent.resolve()
    if not isinstance(value, str):
        raise DataError(f"data YAML {yaml_path}: 'path:' must be a string, got {type(value).__name__}")
    root = Path(value).expanduser()
    if not root.is_absolute():
        root = yaml_path.parent / root  # our choice; see the module docstring
    root = root.resolve()
    if not root.is_dir():
        raise DataError(f"data YAML {yaml_path}: 'path: {value}' is not a folder ({root}); fix 'path:'")
    return root


def _split_images(value: Any, split: str, root: Path, yaml_path: Path) -> list[Path]:
    where = f"data YAML {yaml_path} '{split}:'"
    if isinstance(value, str):
        p = (root / value).resolve()
        if not p.exists() and value.startswith("../"):
            p = (root / value[3:]).resolve()
        entries = [p]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        entries = [(root / v).resolve() for v in value]
    else:
        raise DataError(f"{where} must be a path or a list of paths, got {value!r}")

    found: list[str] = []
    for p in entries:
        if p.is_dir():
            files = glob.glob(str(Path(glob.escape(str(p))) / "**" / "*.*"), recursive=True)
            images = [f for f in files if _is_image(f)]
            if not images:
                raise DataError(f"image folder empty: {p} ({where}); add images or fix the path")
            found += images
        elif p.is_file():
            if _is_image(str(p)):
                raise DataError(f"{where} names an image ({p}); give its folder or a .txt list of images")
            found += _read_list(p, root)
        else:
            raise DataError(f"{where} path not found: {p}; fix the path or 'path:'")
    return [Path(f) for f in sorted(found)]


def _read_list(txt: Path, root: Path) -> list[str]:
    try:
        lines = txt.read_text(encoding="utf-8-sig").strip().splitlines()
    except UnicodeDecodeError:
        raise DataError(f"image list {txt} is not UTF-8 text; it must list one image path per line") from None
    parent = str(txt.parent) + os.sep
    out = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        f = line.replace("./", parent, 1) if line.startswith("./") else os.fspath(root / line)
        if not _is_image(f):
            continue  # Ultralytics skips non-image lines too
        if not os.path.isfile(f):
            raise DataError(f"image list {txt} line {n}: image not found: {f}")
        out.append(f)
    if not out:
        raise DataError(f"image list empty: {txt}; it must list one image path per line")
    return out


def _is_image(f: str) -> bool:
    return f.rpartition(".")[-1].lower() in IMG_FORMATS


def _check_split(images: list[Path], nc: int, check_labels: bool, check_images: bool) -> SplitCounts:
    n_labels = n_background = 0
    instances = dict.fromkeys(range(nc), 0) if check_labels else None
    for img in images:
        lbl = label_path(img)
        if check_images:
            _check_image(img)
        if not lbl.is_file():
            n_background += 1
            continue
        n_labels += 1
        if instances is not None:
            n = _check_label(lbl, nc, instances)
            n_background += n == 0
    return SplitCounts(images=len(images), labels=n_labels, backgrounds=n_background, instances=instances)


def _check_label(lbl: Path, nc: int, instances: dict[int, int]) -> int:
    """Validate one label file, add its boxes to ``instances``, return how many it has."""
    try:
        text = lbl.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"label {lbl} is not UTF-8 text; expected lines 'class cx cy w h'") from None
    n_boxes = 0
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            vals = [float(x) for x in parts]
        except ValueError:
            vals = []
        if len(parts) != 5 or len(vals) != 5 or not all(math.isfinite(v) for v in vals):
            raise DataError(
                f"label {lbl} line {n}: expected 5 numbers 'class cx cy w h', got {line.strip()!r}"
            )
        c = vals[0]
        if not c.is_integer() or not 0 <= c < nc:
            raise DataError(
                f"label {lbl} line {n}: class id {parts[0]} out of range for nc={nc} (ids 0..{nc - 1}); "
                "fix the label or the YAML 'names:'"
            )
        if any(v < -COORD_TOL or v > 1 + COORD_TOL for v in vals[1:]):
            raise DataError(
                f"label {lbl} line {n}: coordinates must be normalized to [0, 1], got {' '.join(parts[1:])}"
            )
        instances[int(c)] += 1
        n_boxes += 1
    return n_boxes


def _check_image(img: Path) -> None:
    try:
        # imdecode of the bytes, not imread: imread cannot open non-ASCII paths on Windows.
        im = cv2.imdecode(np.fromfile(img, np.uint8), cv2.IMREAD_COLOR)
    except (OSError, cv2.error):
        im = None
    if im is None:
        raise DataError(
            f"image {img} cannot be decoded (corrupt or unsupported format); replace or remove it"
        )
    if im.shape[0] < 10 or im.shape[1] < 10:  # Ultralytics drops images under 10 px
        raise DataError(f"image {img} is {im.shape[1]}x{im.shape[0]} px; Ultralytics needs at least 10x10")
