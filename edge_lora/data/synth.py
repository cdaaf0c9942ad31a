"""Synthetic two-line PCB defect dataset, so tests and the offline demo need no network.

Two "product lines" of a PCB-like board share the classes ``scratch``, ``hole`` and ``short`` but look
clearly different (a domain shift), which is the situation a LoRA adapter is meant for:

- line A: green solder mask, horizontal traces, round tinned pads, even light, little noise;
- line B: dark navy mask, vertical traces with 45-degree jogs, square pads, darker, uneven light, more noise.

Every defect is drawn into its own mask first and its YOLO box is the mask's extent, so boxes are tight and
never leave the image. Output is a pure function of the parameters: same seed, byte-identical files.
Torch-free on purpose (numpy, OpenCV, PyYAML only).

Every class must be learnable by a small detector at the demo's 128 px (issue 9: generator version 1 drew
scratches as 1 px lines, half of line A's in a dark green barely off the mask; the demo's base scored them
AP50-95 0.004). Scratches are now bright strokes about 3 px wide at 128 px (:data:`SCRATCH_WIDTH`), at least
a fifth of the image long and 25-65 degrees off the traces, so their boxes are never slivers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from edge_lora.errors import InputError
from edge_lora.fileio import atomic_output_dir, check_output

GENERATOR_VERSION = 2  # 2: scratches visible at 128 px (thicker, longer, bright only)
NAMES: dict[int, str] = {0: "scratch", 1: "hole", 2: "short"}
SCRATCH, HOLE, SHORT = 0, 1, 2
LINES = ("line_a", "line_b")
SPLITS = ("train", "val")

Color = tuple[int, int, int]  # BGR

# Default image counts. DEFAULT_TRAIN is at least the shipped 'default' calibration recipe's min_images (100),
# so `edge-lora demo-data OUT` followed by `edge-lora build` calibrates without options (issue 9, item 3;
# tests/test_data.py checks it against the recipe file).
DEFAULT_TRAIN = 160
DEFAULT_VAL = 16
DEFAULT_IMGSZ = 160

# Scratch geometry, as fractions of the image side. A scratch is a straight stroke through the solder mask
# that exposes the bright laminate/copper underneath.
SCRATCH_LENGTH = (0.2, 0.3)  # >= 26 px at 128 px: long enough to tell from a pad or a speck of noise
SCRATCH_ANGLE_DEG = (25.0, 65.0)  # off the trace direction: never mistaken for a trace, box never a sliver
SCRATCH_WIDTH = 0.022  # stroke width: 3 px at 128 px (the demo), 4 px at 160 px; at least 2 px


@dataclass(frozen=True)
class DemoDataset:
    """Paths of a generated demo dataset (all absolute, at their final location)."""

    root: Path
    line_a_yaml: Path
    line_b_yaml: Path
    names: dict[int, str] = field(default_factory=lambda: dict(NAMES))


@dataclass(frozen=True)
class _Style:
    """Everything that differs between the two product lines."""

    mask: Color  # solder-mask colour
    trace: Color  # trace under the mask
    pad: Color
    copper: Color  # colour of a short
    hole: Color
    hole_rim: Color | None  # exposed laminate ring around a hole, None for no rim
    scratch_colors: tuple[Color, ...]
    vertical: bool  # traces run vertically (else horizontally)
    round_pads: bool
    jogs: bool  # 45-degree jogs in the traces
    noise_sigma: float
    gain: tuple[float, float]  # per-image brightness range
    vignette: float  # 0 = even light; fraction of brightness lost in the corners


_STYLES: dict[str, _Style] = {
    "line_a": _Style(
        mask=(40, 105, 30),
        trace=(70, 160, 60),
        pad=(200, 205, 200),
        copper=(60, 125, 205),
        hole=(12, 18, 12),
        hole_rim=None,
        # Bright only: a dark scratch on the green mask (v1 had one) sits ~50 grey levels off it, lost in
        # Ultralytics' HSV augmentation at 128 px.
        scratch_colors=((225, 240, 225), (190, 215, 230)),
        vertical=False,
        round_pads=True,
        jogs=False,
        noise_sigma=4.0,
        gain=(0.95, 1.1),
        vignette=0.0,
    ),
    "line_b": _Style(
        mask=(75, 35, 18),
        trace=(130, 75, 40),
        pad=(165, 170, 170),
        copper=(55, 115, 195),
        hole=(4, 4, 4),
        hole_rim=(120, 150, 170),
        scratch_colors=((235, 230, 225), (200, 215, 225)),
        vertical=True,
        round_pads=False,
        jogs=True,
        noise_sigma=10.0,
        gain=(0.7, 0.9),
        vignette=0.35,
    ),
}


@dataclass(frozen=True)
class Defect:
    """One drawn defect: class id, tight pixel box ``(x1, y1, x2, y2)`` (x2/y2 exclusive) and its pixels."""

    cls: int
    box: tuple[int, int, int, int]
    mask: np.ndarray  # bool HxW, True where the defect was painted

    def yolo_line(self, s: int) -> str:
        """The YOLO label line (class, normalised centre and size) for an ``s`` x ``s`` image."""
        x1, y1, x2, y2 = self.box
        return f"{self.cls} {(x1 + x2) / 2 / s:.6f} {(y1 + y2) / 2 / s:.6f} {(x2 - x1) / s:.6f} {(y2 - y1) / s:.6f}"


@dataclass(frozen=True)
class RenderedImage:
    """One generated image (uint8 BGR) and its defects, before it is written."""

    image: np.ndarray
    defects: tuple[Defect, ...]

    @property
    def labels(self) -> list[str]:
        """YOLO label lines, one per defect."""
        return [d.yolo_line(self.image.shape[0]) for d in self.defects]


def render_image(line: str, split: str, index: int, *, imgsz: int, seed: int = 0) -> RenderedImage:
    """Render image ``index`` of ``line``/``split`` exactly as :func:`generate_demo_dataset` writes it.

    Each image has its own random stream (seeded by ``seed``, line, split and index), so changing the number
    of val images does not change the train images, and one image can be re-rendered (with its defect masks)
    without generating the dataset.

    Raises:
        InputError: unknown ``line`` or ``split``.
    """
    if line not in LINES or split not in SPLITS:
        raise InputError(f"line must be one of {LINES} and split one of {SPLITS}, got {line!r}/{split!r}")
    rng = np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([seed, LINES.index(line), SPLITS.index(split), index]))
    )
    # The first class cycles with the image index so every class shows up even in a small split.
    img, defects = _render(rng, _STYLES[line], imgsz, first_cls=index % len(NAMES))
    return RenderedImage(image=img, defects=tuple(defects))


@dataclass
class _Board:
    """A rendered clean board and where its traces run (needed to place shorts between neighbours)."""

    img: np.ndarray  # float32 HxWx3
    traces: list[int]  # coordinate across the traces (y for horizontal, x for vertical), sorted
    trace_w: int
    span: list[tuple[int, int]]  # straight, jog-free interval of each trace along its direction


def generate_demo_dataset(
    out: str | Path,
    *,
    n_train: int = DEFAULT_TRAIN,
    n_val: int = DEFAULT_VAL,
    imgsz: int = DEFAULT_IMGSZ,
    seed: int = 0,
    overwrite: bool = False,
) -> DemoDataset:
    """Write the two-line synthetic defect dataset to ``out`` and return its paths.

    Layout: ``OUT/{line_a,line_b}/{images,labels}/{train,val}/``, data YAMLs ``OUT/line_a.yaml`` and
    ``OUT/line_b.yaml`` (absolute ``path:``), ``OUT/README.md`` and ``OUT/manifest.json``. The whole tree is
    built in a temp folder beside ``out`` and renamed into place, so ``out`` is either complete or absent.

    Raises:
        OutputExistsError: ``out`` exists and ``overwrite`` is False.
        InputError: a count or size is out of range.
    """
    if n_train < 1 or n_val < 1:
        raise InputError(f"n_train and n_val must be >= 1, got n_train={n_train} n_val={n_val}")
    if not 64 <= imgsz <= 4096:
        raise InputError(f"imgsz must be between 64 and 4096, got {imgsz}")
    # The YAML 'path:' must name the final folder, not the temp one it is written in.
    final = check_output(out, overwrite).resolve()
    counts = {"train": n_train, "val": n_val}
    with atomic_output_dir(final, overwrite) as tmp:
        for line in LINES:
            for split in SPLITS:
                img_dir = tmp / line / "images" / split
                lbl_dir = tmp / line / "labels" / split
                img_dir.mkdir(parents=True)
                lbl_dir.mkdir(parents=True)
                for i in range(counts[split]):
                    r = render_image(line, split, i, imgsz=imgsz, seed=seed)
                    stem = f"{line}_{split}_{i:04d}"
                    ok, png = cv2.imencode(".png", r.image)
                    if not ok:  # pragma: no cover - OpenCV always encodes uint8 BGR
                        raise RuntimeError(f"OpenCV failed to encode {stem}.png")
                    (img_dir / f"{stem}.png").write_bytes(png.tobytes())
                    (lbl_dir / f"{stem}.txt").write_text("".join(f"{ln}\n" for ln in r.labels))
            (tmp / f"{line}.yaml").write_text(_data_yaml(final / line, line, seed))
        (tmp / "README.md").write_text(_readme(n_train, n_val, imgsz, seed))
        manifest = {
            "generator": "edge_lora.data.synth",
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "imgsz": imgsz,
            "counts": {line: dict(counts) for line in LINES},
            "names": {str(k): v for k, v in NAMES.items()},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return DemoDataset(root=final, line_a_yaml=final / "line_a.yaml", line_b_yaml=final / "line_b.yaml")


def _data_yaml(root: Path, line: str, seed: int) -> str:
    body = {"path": str(root), "train": "images/train", "val": "images/val", "names": dict(NAMES)}
    head = f"# Synthetic PCB defects, {line.replace('_', ' ')} (edge_lora.data.synth, seed {seed}).\n"
    return head + yaml.safe_dump(body, sort_keys=False)


def _readme(n_train: int, n_val: int, imgsz: int, seed: int) -> str:
    return (
        "# Synthetic PCB defect dataset\n\n"
        "Generated by `edge_lora.data.synth.generate_demo_dataset` (generator version "
        f"{GENERATOR_VERSION}, seed {seed}) for tests and the offline demo: two product lines of a PCB-like "
        f"board at {imgsz}x{imgsz} px, each with {n_train} train and {n_val} val images in Ultralytics YOLO "
        "format, classes 0 scratch, 1 hole, 2 short. Line A is a green board with horizontal traces and "
        "round pads; line B a dark navy board with vertical traces, square pads, darker uneven light and "
        "more noise, so a detector trained on A meets a domain shift on B. Same seed, byte-identical files.\n"
    )


def _render(rng: np.random.Generator, st: _Style, s: int, first_cls: int) -> tuple[np.ndarray, list[Defect]]:
    """One image (uint8 BGR) and its defects; ``first_cls`` is the class of the first defect."""
    board = _draw_board(rng, st, s)
    img = board.img
    n = int(rng.integers(1, 5))
    classes = [first_cls] + [int(c) for c in rng.integers(0, len(NAMES), n - 1)]
    boxes: list[tuple[int, int, int, int]] = []
    defects: list[Defect] = []
    for cls in classes:
        for _ in range(30):  # rejection-sample a spot that does not touch an earlier defect
            mask, palette = _defect(rng, st, board, cls, s)
            ys, xs = np.nonzero(mask)
            if xs.size == 0:
                continue
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            if not any(_touch(box, b, margin=2) for b in boxes):
                break
        else:
            continue  # board too crowded for this one; fewer defects is fine
        for v, col in enumerate(palette, 1):  # mask value v is painted in palette[v - 1]
            m = mask == v
            img[m] = np.asarray(col, np.float32) + rng.normal(0, 6, (int(m.sum()), 3)).astype(np.float32)
        boxes.append(box)
        defects.append(Defect(cls=cls, box=box, mask=mask > 0))
    img = _finish(rng, st, img, s)
    return img, defects


def _draw_board(rng: np.random.Generator, st: _Style, s: int) -> _Board:
    # Draw as if traces were horizontal, then transpose for vertical lines: one code path, two layouts.
    jitter = rng.normal(0, 6, 3)
    img = np.empty((s, s, 3), np.float32)
    img[:] = np.asarray(st.mask, np.float32) + jitter
    trace_col = tuple(float(c) for c in np.asarray(st.trace, np.float32) + jitter)
    pad_col = tuple(float(c) for c in st.pad)
    trace_w = max(2, round(s * rng.uniform(0.018, 0.03)))
    pitch = s * rng.uniform(0.09, 0.13)
    first = rng.uniform(0.3, 1.0) * pitch
    traces = [int(round(first + k * pitch)) for k in range(int((s - first) // pitch) + 1)]
    traces = [t for t in traces if trace_w <= t < s - trace_w]
    span: list[tuple[int, int]] = []
    for t in traces:
        # Some traces start or end inside the board (and get a pad there).
        a = int(rng.integers(0, s // 4)) if rng.random() < 0.5 else 0
        b = s - (int(rng.integers(0, s // 4)) if rng.random() < 0.5 else 0)
        j0 = int(rng.integers(a + s // 8, a + s // 2))
        dy = int(rng.choice([-1, 1])) * max(2, int(pitch * 0.4))
        j1, j2 = j0 + abs(dy), j0 + abs(dy) + int(rng.integers(s // 10, s // 4))
        if st.jogs and rng.random() < 0.5 and j2 + abs(dy) < b - 2:
            # A 45-degree jog: the trace leaves its track for a stretch, giving diagonal segments.
            pts = np.array([[a, t], [j0, t], [j1, t + dy], [j2, t + dy], [j2 + abs(dy), t], [b, t]], np.int32)
            cv2.polylines(img, [pts], False, trace_col, trace_w)
            span.append((j2 + abs(dy) + 2, b) if b - j2 > j0 - a else (a, j0 - 2))
        else:
            cv2.line(img, (a, t), (b, t), trace_col, trace_w)
            span.append((a, b))
        # Pads sit on the trace ends that lie inside the board.
        r = max(2, int(trace_w * 1.4))
        for end in (a, b):
            if 0 < end < s:
                if st.round_pads:
                    cv2.circle(img, (end, t), r, pad_col, -1)
                else:
                    cv2.rectangle(img, (end - r, t - r), (end + r, t + r), pad_col, -1)
    if st.vertical:
        img = np.ascontiguousarray(img.transpose(1, 0, 2))
    return _Board(img=img, traces=traces, trace_w=trace_w, span=span)


def _defect(
    rng: np.random.Generator, st: _Style, board: _Board, cls: int, s: int
) -> tuple[np.ndarray, tuple[Color, ...]]:
    """Mask and palette of one candidate defect of class ``cls``: pixel value v > 0 gets ``palette[v - 1]``.

    An all-zero mask means no room was found; the caller samples again.
    """
    mask = np.zeros((s, s), np.uint8)
    if cls == SHORT and len(board.traces) >= 2:
        k = int(rng.integers(0, len(board.traces) - 1))
        t0, t1 = board.traces[k], board.traces[k + 1]
        lo = max(board.span[k][0], board.span[k + 1][0])
        hi = min(board.span[k][1], board.span[k + 1][1])
        w = max(3, round(s * rng.uniform(0.04, 0.09)))
        if hi - lo <= w + 4:
            return mask, (st.copper,)  # no common straight stretch: caller resamples
        u = int(rng.integers(lo + w // 2 + 2, hi - w // 2 - 1))
        # An irregular blob from one trace to the next: an ellipse plus a couple of lumps.
        cy = (t0 + t1) / 2
        half = (t1 - t0) / 2 + board.trace_w / 2
        cv2.ellipse(mask, (u, int(round(cy))), (w // 2, int(round(half))), 0, 0, 360, 1, -1)
        for _ in range(2):
            cv2.circle(
                mask,
                (
                    u + int(rng.integers(-w // 2, w // 2 + 1)),
                    int(round(cy + rng.uniform(-half / 2, half / 2))),
                ),
                max(1, w // 3),
                1,
                -1,
            )
        if st.vertical:
            mask = np.ascontiguousarray(mask.T)
        return mask, (st.copper,)
    if cls == SHORT:
        return mask, (st.copper,)  # fewer than two traces (never with the pitches above): no short here
    if cls == HOLE:
        r = max(3, round(s * rng.uniform(0.03, 0.06)))
        c = (int(rng.integers(r + 1, s - r - 1)), int(rng.integers(r + 1, s - r - 1)))
        if st.hole_rim is None:
            cv2.circle(mask, c, r, 1, -1)
            return mask, (st.hole,)
        # Line B's dark board would swallow a dark hole: a ring of exposed laminate makes it visible.
        cv2.circle(mask, c, r + max(1, r // 3), 2, -1)
        cv2.circle(mask, c, r, 1, -1)
        return mask, (st.hole, st.hole_rim)
    # Scratch: a bright stroke (see SCRATCH_* above). Its angle is measured from the x axis; for vertical
    # traces that is 25-65 degrees off them too, as the range is symmetric about 45.
    length = s * rng.uniform(*SCRATCH_LENGTH)
    ang = np.deg2rad(rng.uniform(*SCRATCH_ANGLE_DEG)) * float(rng.choice([-1, 1]))
    th = max(2, round(s * SCRATCH_WIDTH))
    dx, dy = length * np.cos(ang) / 2, length * np.sin(ang) / 2
    # Keep the whole stroke (half its width beyond the end points) inside the image.
    pad = th / 2 + 1
    cx = rng.uniform(abs(dx) + pad, s - abs(dx) - pad)
    cy = rng.uniform(abs(dy) + pad, s - abs(dy) - pad)
    p0, p1 = (int(round(cx - dx)), int(round(cy - dy))), (int(round(cx + dx)), int(round(cy + dy)))
    cv2.line(mask, p0, p1, 1, th)
    return mask, (st.scratch_colors[int(rng.integers(0, len(st.scratch_colors)))],)


def _touch(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def _finish(rng: np.random.Generator, st: _Style, img: np.ndarray, s: int) -> np.ndarray:
    """Lighting, sensor noise and quantization: the part of the domain shift that is not geometry."""
    gain = rng.uniform(*st.gain)
    if st.vignette:
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / (s - 1) - 0.5
        ox, oy = rng.uniform(-0.2, 0.2, 2)  # light centre moves a little from image to image
        r2 = ((xx - ox) ** 2 + (yy - oy) ** 2) / 0.5
        img = img * (1.0 - st.vignette * r2)[..., None]
    img = img * gain + rng.normal(0, st.noise_sigma, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
