"""Tests of the torch-free device runtime: runners, pre/postprocessing, artifact checks, TensorRT guards.

Reference models are built from Ultralytics YAML (random init, nothing downloaded) and exported once per
session at imgsz 64. A randomly initialised YOLO is useless as a reference as it comes: in eval mode its
BatchNorm layers hold running mean 0 / var 1, the activations shrink layer by layer to ~1e-5 and every
anchor ends up with the same, bias-only, near-zero class scores (ties everywhere). ``_make_detector``
therefore gives it input-dependent, well-separated outputs without training:

1. BatchNorm statistics are recalibrated on 8 synthetic images (one train-mode pass, momentum 1), then
   every BN gamma is scaled by 0.9. At gamma 1.0 the random net is chaotic (a 1e-4 input change moves
   outputs by ~1, so FP32 rounding alone breaks a 1e-3 parity check); 0.9 keeps image content visible
   at the head (~40 % relative variation on P3) with perturbations damped, so backends agree to ~1e-4.
2. The Detect head's final class convs are rescaled so their logits vary with std 2 across anchors, with
   bias -3 for classes 0-2 and -8 for the rest: a few dozen detections per image at conf 0.25, several of
   the same class overlapping, so NMS really suppresses boxes.
3. The final box convs are rescaled to logit std 1 with a bias falling 0.3 per DFL bin, giving boxes of
   varied sizes instead of near-image-sized ones.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from edge_lora.errors import InputError, ModelError, ToolError
from edge_lora.runtime.base import normalize_metadata
from edge_lora.runtime.loader import load_runner, runner_class
from edge_lora.runtime.onnxrt import OnnxRuntimeRunner, read_onnx_metadata
from edge_lora.runtime.openvino_rt import OpenVinoRunner
from edge_lora.runtime.prepost import (
    Detections,
    LetterboxInfo,
    letterbox,
    postprocess,
    preprocess,
    scale_boxes,
)
from edge_lora.runtime.tensorrt_rt import (
    TensorRtRunner,
    check_engine_fingerprint,
    compare_fingerprints,
    current_device_fingerprint,
    fingerprint_path,
    read_engine_header,
)

REPO = Path(__file__).resolve().parents[1]
IMGSZ = 64
# Odd sizes on purpose: odd padding, aspect ratios both ways, up- and downscaling.
SHAPES = [(64, 64), (70, 110), (97, 53), (120, 45), (33, 200), (64, 63), (500, 375)]


def synth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A BGR uint8 image: a flat background and four random filled rectangles."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), rng.integers(0, 255, 3), np.uint8)
    for _ in range(4):
        x1, y1 = rng.integers(0, max(w - 3, 1)), rng.integers(0, max(h - 3, 1))
        x2, y2 = rng.integers(x1 + 1, w + 1), rng.integers(y1 + 1, h + 1)
        img[y1:y2, x1:x2] = rng.integers(0, 255, 3)
    return img


@pytest.fixture(scope="session")
def images() -> list[np.ndarray]:
    return [synth_image(h, w, 100 + i) for i, (h, w) in enumerate(SHAPES)]


def _make_detector(cfg: str, out: Path) -> Path:
    """Build ``cfg`` from YAML, make its outputs input-dependent (see the module docstring), save a .pt."""
    torch = pytest.importorskip("torch")
    ultralytics = pytest.importorskip("ultralytics")
    nn = torch.nn

    torch.manual_seed(0)
    model = ultralytics.YOLO(cfg)
    net = model.model
    calib = np.stack([synth_image(IMGSZ, IMGSZ, i) for i in range(8)])
    x = torch.from_numpy(np.ascontiguousarray(calib[..., ::-1].transpose(0, 3, 1, 2))).float() / 255
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(x)
    for bn in bns:
        bn.weight.data *= 0.9
    net.eval()

    head = net.model[-1]
    finals = [
        (n, seq[-1])
        for n in ("cv2", "one2one_cv2", "cv3", "one2one_cv3")
        for seq in getattr(head, n, None) or []
    ]
    logits = {}

    def grab(conv, _inputs, output):
        logits[id(conv)] = output - conv.bias.view(1, -1, 1, 1)

    hooks = [conv.register_forward_hook(grab) for _, conv in finals]
    with torch.no_grad():
        for e2e in (False, True) if getattr(head, "one2one_cv2", None) is not None else (False,):
            head.end2end = e2e
            net(x)
    head.end2end = False
    for h in hooks:
        h.remove()
    for branch, conv in finals:
        std = logits[id(conv)].std().item()
        if "cv3" in branch:  # class scores
            conv.weight.data *= 2.0 / std
            conv.bias.data[:] = -8.0
            conv.bias.data[:3] = -3.0
        else:  # DFL box distributions: favour short distances
            conv.weight.data *= 1.0 / std
            conv.bias.data[:] = -0.3 * torch.arange(head.reg_max).repeat(4).float()
    model.save(out)
    return out


@pytest.fixture(scope="session")
def detectors(tmp_path_factory) -> dict[str, types.SimpleNamespace]:
    """YOLO26n (NMS-free end-to-end head) and YOLO11n (raw output + NMS) as .pt, .onnx and OpenVINO IR."""
    ultralytics = pytest.importorskip("ultralytics")
    root = tmp_path_factory.mktemp("detectors")
    found = {}
    for name in ("yolo26n", "yolo11n"):
        pt = _make_detector(f"{name}.yaml", root / f"{name}.pt")
        model = ultralytics.YOLO(pt)
        # Ultralytics quirk (8.4.x exporter): only nms=False exports YOLO26's one-to-one (NMS-free) head;
        # the default nms=None exports the one-to-many head, whose raw output needs NMS like YOLO11's.
        onnx = model.export(format="onnx", imgsz=IMGSZ, nms=False, verbose=False)
        ov = model.export(format="openvino", imgsz=IMGSZ, nms=False, verbose=False)
        found[name] = types.SimpleNamespace(pt=pt, onnx=Path(onnx), ov=Path(ov), end2end=name == "yolo26n")
    return found


def _torch_model(pt: Path, end2end: bool):
    """The PyTorch model behind an export, set to run the same head as the export.

    Ultralytics quirk: a YOLO26 runs its one-to-many head (raw output + NMS) in PyTorch unless told otherwise,
    while the nms=False export runs the one-to-one head. For direct forward calls ``model.end2end = True``
    selects it; ``predict`` ignores that and re-selects the head from its own ``nms`` argument
    (``end2end=args.nms is False``, engine/predictor.py), so predict needs ``nms=False`` too.
    """
    ultralytics = pytest.importorskip("ultralytics")
    model = ultralytics.YOLO(pt)
    if end2end:
        model.model.end2end = True
    return model


def _match(ref: Detections, ours: Detections, box_tol: float = 1.0, score_tol: float = 1e-3) -> None:
    """Assert a one-to-one match: same class, every box corner within ``box_tol`` px, score within
    ``score_tol``. Order-insensitive: near-equal scores may be ranked differently by two backends."""
    assert len(ref) == len(ours), f"{len(ref)} reference detections, {len(ours)} ours"
    free = np.ones(len(ours), bool)
    for box, score, cls in zip(ref.boxes, ref.scores, ref.class_ids, strict=True):
        ok = (
            free
            & (ours.class_ids == cls)
            & (np.abs(ours.boxes - box).max(1) <= box_tol)
            & (np.abs(ours.scores - score) <= score_tol)
        )
        assert ok.any(), f"no match for class {cls} box {box} score {score}"
        free[np.flatnonzero(ok)[0]] = False


def _as_detections(result) -> Detections:
    b = result.boxes
    return Detections(b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy().astype(np.int64))


# ------------------------------------------------------------------------------------ torch-free device
_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class _Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "torchvision", "ultralytics", "onnx"}:
                raise ImportError(f"{name} is blocked: the device side must not need it")
            return None

    sys.meta_path.insert(0, _Blocked())
    """
)


def _run_blocked(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", _BLOCKER + textwrap.dedent(code), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_runtime_imports_without_torch_or_ultralytics():
    proc = _run_blocked(
        """
        import sys
        import edge_lora.runtime.prepost, edge_lora.runtime.onnxrt, edge_lora.runtime.openvino_rt
        import edge_lora.runtime.loader, edge_lora.runtime.tensorrt_rt
        import edge_lora.runtime as rt
        assert callable(rt.load_runner) and callable(rt.postprocess)
        heavy = {"torch", "ultralytics", "onnx", "onnxruntime", "openvino", "tensorrt", "cuda", "pycuda"}
        loaded = sorted(heavy & {m.split(".")[0] for m in sys.modules})
        assert not loaded, f"imported at module import time: {loaded}"
        print("ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_device_side_inference_without_torch(detectors, images):
    """The whole device path (load, preprocess, infer on ORT and OpenVINO, postprocess) with torch and
    ultralytics unimportable gives the same detections as in this process."""
    d = detectors["yolo11n"]
    proc = _run_blocked(
        """
        import json, sys
        import numpy as np
        from edge_lora.runtime import load_runner, preprocess, postprocess
        imgs = [np.load(p) for p in sys.argv[3:]]
        out = {}
        for key, path, kw in (("ort", sys.argv[1], {}), ("ov", sys.argv[2], {"inference_precision": "f32"})):
            with load_runner(path, **kw) as runner:
                batch, infos = preprocess(imgs[:1], runner.metadata["imgsz"])
                dets = postprocess(runner.infer(batch), infos, end2end=runner.metadata["end2end"])
                out[key] = dets[0].boxes.tolist()
        assert "torch" not in sys.modules and "ultralytics" not in sys.modules
        print(json.dumps(out))
        """,
        str(d.onnx),
        str(d.ov),
        *_saved_images(d.onnx.parent, images[:1]),
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    with load_runner(d.onnx) as runner:
        batch, infos = preprocess(images[:1], IMGSZ)
        want = postprocess(runner.infer(batch), infos, end2end=False)[0]
    assert len(want) > 0
    np.testing.assert_array_equal(np.asarray(got["ort"], np.float32), want.boxes)
    np.testing.assert_allclose(np.asarray(got["ov"], np.float32), want.boxes, atol=0.05)


def _saved_images(folder: Path, imgs: list[np.ndarray]) -> list[str]:
    paths = []
    for i, img in enumerate(imgs):
        p = folder / f"image{i}.npy"
        np.save(p, img)
        paths.append(str(p))
    return paths


# ------------------------------------------------------------------------------------------ letterbox
@pytest.mark.parametrize("shape", [*SHAPES, (1, 300), (7, 5), (300, 1)])
@pytest.mark.parametrize(
    ("new_shape", "auto", "scaleup"), [(IMGSZ, False, True), ((96, 64), False, True), (64, True, False)]
)
def test_letterbox_matches_ultralytics(shape, new_shape, auto, scaleup):
    augment = pytest.importorskip("ultralytics.data.augment")
    img = synth_image(*shape, seed=sum(shape))
    ref = augment.LetterBox(new_shape, auto=auto, scaleup=scaleup, stride=32)(image=img)
    ours, ratio, pad = letterbox(img, new_shape, stride=32, auto=auto, scaleup=scaleup)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    assert ours.tobytes() == ref.tobytes()
    # ratio and pad describe where the image landed: the padding rows/columns hold exactly 114.
    left, top = pad
    h, w = round(shape[0] * ratio[1]), round(shape[1] * ratio[0])
    assert (ours[:top] == 114).all() and (ours[:, :left] == 114).all()
    assert (ours[top + h :] == 114).all() and (ours[:, left + w :] == 114).all()


def test_scale_boxes_matches_ultralytics():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("ultralytics.utils.ops")
    rng = np.random.default_rng(0)
    for h0, w0 in SHAPES:
        _, ratio, pad = letterbox(np.zeros((h0, w0, 3), np.uint8), IMGSZ)
        info = LetterboxInfo((h0, w0), (IMGSZ, IMGSZ), ratio, pad)
        xy = rng.uniform(-5, IMGSZ + 5, (50, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + rng.uniform(0, 30, (50, 2)).astype(np.float32)], 1)
        ref = ops.scale_boxes((IMGSZ, IMGSZ), torch.from_numpy(boxes.copy()), (h0, w0)).numpy()
        np.testing.assert_allclose(scale_boxes(boxes.copy(), info), ref, atol=1e-4)


def test_preprocess_layout_and_image_kinds():
    bgr = synth_image(30, 50, 1)
    batch, infos = preprocess([bgr, bgr[..., 0], np.dstack([bgr, np.full((30, 50), 255, np.uint8)])], 64)
    assert batch.shape == (3, 3, 64, 64) and batch.dtype == np.float32 and batch.flags.c_contiguous
    lb, _, _ = letterbox(bgr, 64)
    np.testing.assert_array_equal(
        batch[0], lb[..., ::-1].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    )
    np.testing.assert_array_equal(batch[0], batch[2])  # BGRA -> BGR
    assert infos[0] == LetterboxInfo((30, 50), (64, 64), (64 / 50, 38 / 30), (0, 13))
    half, _ = preprocess([bgr], (64, 96), fp16=True)
    assert half.dtype == np.float16 and half.shape == (1, 3, 64, 96)
    with pytest.raises(InputError):
        preprocess([bgr.astype(np.float32)], 64)
    with pytest.raises(InputError):
        preprocess([], 64)


def test_preprocess_matches_ultralytics_predictor(detectors, images):
    ultralytics = pytest.importorskip("ultralytics")
    model = ultralytics.YOLO(detectors["yolo11n"].onnx, task="detect")
    model.predict(images[0], imgsz=IMGSZ, verbose=False)  # sets up model.predictor
    for img in images:
        ref = model.predictor.preprocess([img]).numpy()
        ours, _ = preprocess([img], IMGSZ)
        assert ours.dtype == ref.dtype and ours.shape == ref.shape
        np.testing.assert_array_equal(ours, ref)


# ---------------------------------------------------------------------------------------- postprocess
@pytest.mark.parametrize("name", ["yolo26n", "yolo11n"])
@pytest.mark.parametrize("conf", [0.25, 0.05])
def test_decode_matches_ultralytics_predict_on_onnx(detectors, images, name, conf):
    """Same ONNX file, Ultralytics predict vs our ORT runner + numpy pre/post: identical detections."""
    ultralytics = pytest.importorskip("ultralytics")
    d = detectors[name]
    ref_model = ultralytics.YOLO(d.onnx, task="detect")
    total = candidates = 0
    with OnnxRuntimeRunner(d.onnx) as runner:
        assert runner.metadata["end2end"] is d.end2end
        for img in images:
            ref = _as_detections(ref_model.predict(img, imgsz=IMGSZ, conf=conf, verbose=False)[0])
            batch, infos = preprocess([img], runner.metadata["imgsz"])
            out = runner.infer(batch)
            ours = postprocess(out, infos, end2end=runner.metadata["end2end"], conf=conf)[0]
            assert len(ours) == len(ref)
            np.testing.assert_array_equal(ours.class_ids, ref.class_ids)
            np.testing.assert_allclose(ours.boxes, ref.boxes, atol=1.0, rtol=0)
            np.testing.assert_allclose(ours.scores, ref.scores, atol=1e-3, rtol=0)
            assert ours.boxes.dtype == np.float32 and ours.class_ids.dtype == np.int64
            total += len(ours)
            raw = out["output0"][0]
            candidates += int((raw[:, 4] > conf).sum()) if d.end2end else int((raw[4:].max(0) > conf).sum())
    assert total > 20, "the reference model should detect something"
    if not d.end2end:
        assert candidates > total, "NMS should have suppressed overlapping boxes"


@pytest.mark.parametrize("name", ["yolo26n", "yolo11n"])
def test_decode_matches_pytorch_predict(detectors, images, name):
    """PyTorch model predict (Ultralytics pre/post, torch NMS) vs our ONNX runner + numpy pre/post."""
    d = detectors[name]
    model = _torch_model(d.pt, d.end2end)
    with load_runner(d.onnx) as runner:
        for img in images:
            # Ultralytics quirk: Model.predict defaults to rect=True, and a PyTorch model then letterboxes to
            # the minimum stride-multiple rectangle (e.g. 64x32), not the fixed imgsz square every static
            # export sees. rect=False makes it feed the same 64x64 input.
            head = {"nms": False} if d.end2end else {}  # see _torch_model
            ref = model.predict(img, imgsz=IMGSZ, conf=0.25, rect=False, verbose=False, **head)[0]
            ref = _as_detections(ref)
            batch, infos = preprocess([img], IMGSZ)
            ours = postprocess(runner.infer(batch), infos, end2end=d.end2end, conf=0.25)[0]
            _match(ref, ours)


@pytest.mark.parametrize("name", ["yolo26n", "yolo11n"])
def test_runners_match_pytorch_raw_outputs(detectors, images, name):
    """ORT and OpenVINO (FP32) raw outputs equal the PyTorch model's within 1e-3."""
    torch = pytest.importorskip("torch")
    d = detectors[name]
    net = _torch_model(d.pt, d.end2end).model.float().eval()
    batch, _ = preprocess(images, IMGSZ)
    with (
        OnnxRuntimeRunner(d.onnx) as ort_runner,
        OpenVinoRunner(d.ov, inference_precision="f32") as ov_runner,
    ):
        for x in batch:
            x = x[None]
            with torch.no_grad():
                ref = net(torch.from_numpy(x))
            ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).numpy()
            for runner in (ort_runner, ov_runner):
                (out,) = runner.infer(x).values()
                assert out.shape == ref.shape and out.dtype == np.float32
                if d.end2end:  # (1, k, 6) top-k rows: near-equal scores may be ranked differently
                    cost = np.abs(ref[0][:, None, :] - out[0][None, :, :]).max(-1)
                    best = cost.argmin(1)
                    assert len(set(best.tolist())) == len(best), f"{runner.name}: rows do not pair up"
                    assert cost.min(1).max() < 1e-3, f"{runner.name}: max diff {cost.min(1).max()}"
                else:
                    np.testing.assert_allclose(out, ref, atol=1e-3, rtol=0, err_msg=runner.name)


@pytest.mark.parametrize("name", ["yolo26n", "yolo11n"])
def test_openvino_matches_ultralytics_openvino_predict(detectors, images, name):
    """Same IR and same compile config (device default precision, LATENCY): identical detections."""
    ultralytics = pytest.importorskip("ultralytics")
    d = detectors[name]
    ref_model = ultralytics.YOLO(d.ov, task="detect")
    with load_runner(d.ov) as runner:
        assert runner.metadata["end2end"] is d.end2end and runner.metadata["imgsz"] == [IMGSZ, IMGSZ]
        for img in images:
            ref = _as_detections(ref_model.predict(img, imgsz=IMGSZ, verbose=False)[0])
            batch, infos = preprocess([img], IMGSZ)
            ours = postprocess(runner.infer(batch), infos, end2end=runner.metadata["end2end"])[0]
            _match(ref, ours, box_tol=1e-3, score_tol=1e-6)


def test_postprocess_raw_matches_ultralytics_nms_on_random_predictions():
    """Randomised check of the numpy decode against Ultralytics' non_max_suppression + scale_boxes,
    with few classes and many overlapping boxes so NMS does real work."""
    torch = pytest.importorskip("torch")
    nms_mod = pytest.importorskip("ultralytics.utils.nms")
    ops = pytest.importorskip("ultralytics.utils.ops")
    rng = np.random.default_rng(1)
    for trial in range(20):
        nc, anchors = (3, 400) if trial % 2 else (80, 2000)
        pred = np.empty((1, 4 + nc, anchors), np.float32)
        pred[0, :2] = rng.uniform(0, 640, (2, anchors))
        pred[0, 2:4] = rng.uniform(4, 160, (2, anchors))
        pred[0, 4:] = rng.uniform(0, 1, (nc, anchors)) ** 3
        h0, w0 = int(rng.integers(200, 900)), int(rng.integers(200, 900))
        _, ratio, pad = letterbox(np.zeros((h0, w0, 3), np.uint8), 640)
        info = LetterboxInfo((h0, w0), (640, 640), ratio, pad)
        conf, iou, max_det = [(0.25, 0.7, 300), (0.05, 0.45, 100), (0.5, 0.3, 10)][trial % 3]
        ref = nms_mod.non_max_suppression(torch.from_numpy(pred), conf, iou, max_det=max_det)[0]
        ref[:, :4] = ops.scale_boxes((640, 640), ref[:, :4], (h0, w0))
        ours = postprocess(pred, [info], end2end=False, conf=conf, iou=iou, max_det=max_det)[0]
        ref = ref.numpy()
        assert len(ours) == len(ref), trial
        np.testing.assert_array_equal(ours.class_ids, ref[:, 5].astype(np.int64))
        np.testing.assert_allclose(ours.boxes, ref[:, :4], atol=1e-3)
        np.testing.assert_array_equal(ours.scores, ref[:, 4])


def test_postprocess_rules():
    info = LetterboxInfo((64, 64), (64, 64), (1.0, 1.0), (0, 0))

    def raw(*dets, nc=2):  # each det: (cx, cy, w, h, class, score)
        out = np.zeros((1, 4 + nc, len(dets)), np.float32)
        for i, (cx, cy, w, h, c, s) in enumerate(dets):
            out[0, :4, i] = cx, cy, w, h
            out[0, 4 + c, i] = s
        return out

    same = raw(
        (20, 20, 10, 10, 0, 0.9), (21, 20, 10, 10, 0, 0.8), (21, 20, 10, 10, 1, 0.7), (50, 50, 4, 4, 0, 0.25)
    )
    (d,) = postprocess(same, [info], nc=2)  # end2end inferred from the (1, 6, 4) shape and nc
    assert d.class_ids.tolist() == [0, 1]  # same-class overlap suppressed, other class kept
    np.testing.assert_allclose(d.scores, [0.9, 0.7])
    np.testing.assert_allclose(d.boxes[0], [15, 15, 25, 25])
    assert len(postprocess(same, [info], end2end=False, conf=0.0, max_det=1)[0]) == 1
    assert len(postprocess(same, [info], end2end=False, conf=0.25)[0]) == 2  # score == conf is dropped

    e2e = np.array([[[1, 2, 30, 40, 0.9, 3], [5, 5, 9, 9, 0.1, 1], [0, 0, 64, 64, 0.5, 2]]], np.float32)
    shifted = LetterboxInfo((32, 64), (64, 64), (1.0, 1.0), (0, 16))
    (d,) = postprocess(e2e, [shifted], conf=0.25)
    assert d.class_ids.tolist() == [3, 2]
    np.testing.assert_allclose(d.boxes, [[1, 0, 30, 24], [0, 0, 64, 32]])  # pad removed, clipped
    assert len(postprocess(e2e, [shifted], end2end=True, conf=0.0, max_det=1)[0]) == 1
    assert len(postprocess({"output0": e2e}, [shifted])[0]) == 2

    with pytest.raises(InputError, match="end2end"):
        postprocess(np.zeros((1, 6, 6), np.float32), [info], nc=2)
    with pytest.raises(InputError, match="batch"):
        postprocess(e2e, [info, info])
    empty = postprocess(np.zeros((1, 84, 10), np.float32), [info])[0]
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)


# -------------------------------------------------------------------------------------- runner contract
def test_runner_contract(detectors, images):
    d = detectors["yolo11n"]
    runner = load_runner(d.onnx, intra_op_threads=1)
    assert isinstance(runner, OnnxRuntimeRunner) and not runner.is_active
    meta = runner.metadata  # read from the file, before activation
    assert meta["imgsz"] == [IMGSZ, IMGSZ] and meta["stride"] == 32 and meta["task"] == "detect"
    assert meta["end2end"] is False and len(meta["names"]) == 80 and meta["names"][0] == "0"
    with pytest.raises(RuntimeError, match="activate"):
        runner.infer(np.zeros((1, 3, IMGSZ, IMGSZ), np.float32))
    batch, _ = preprocess(images[:1], IMGSZ)
    with runner:
        assert runner.load_time_s > 0
        assert runner.input_metadata() == {"images": (np.dtype(np.float32), (1, 3, IMGSZ, IMGSZ))}
        assert runner.output_metadata() == {"output0": (np.dtype(np.float32), (1, 84, 84))}
        a = runner.infer(batch)["output0"]
        b = runner.infer({"images": batch})["output0"]
        np.testing.assert_array_equal(a, b)
        assert runner.last_inference_time > 0
        with pytest.raises(InputError, match="dtype"):
            runner.infer(batch.astype(np.float64))
        with pytest.raises(InputError, match="shape"):
            runner.infer(np.zeros((1, 3, IMGSZ, IMGSZ + 32), np.float32))
        with pytest.raises(InputError, match="missing"):
            runner.infer({"x": batch})
    assert not runner.is_active
    with runner:  # re-activation works
        np.testing.assert_array_equal(runner.infer(batch)["output0"], a)

    with OpenVinoRunner(d.ov, inference_precision="f32", num_streams=1) as ov:
        assert ov.metadata["names"][79] == "79" and ov.metadata["end2end"] is False
        ((name, (dtype, shape)),) = ov.input_metadata().items()
        assert dtype == np.float32 and shape == (1, 3, IMGSZ, IMGSZ)
        first = ov.infer(batch)["output0"]
        other, _ = preprocess(images[1:2], IMGSZ)
        ov.infer(other)
        np.testing.assert_allclose(first, a, atol=1e-3)  # copy_outputs=True: not overwritten by later calls
        shared = ov.infer(batch, copy_outputs=False)["output0"]
        np.testing.assert_array_equal(shared, first)


def test_normalize_metadata():
    meta = normalize_metadata(
        {"names": "{0: 'scratch', 1: 'dent'}", "imgsz": "[640, 480]", "stride": "32", "end2end": "False"}
    )
    assert meta == {"names": {0: "scratch", 1: "dent"}, "imgsz": [640, 480], "stride": 32, "end2end": False}
    assert (
        normalize_metadata({"args": "{'nms': True}", "end2end": "False"})["end2end"] is True
    )  # embedded NMS
    assert normalize_metadata({"names": {"0": "a"}, "imgsz": 320})["names"] == {0: "a"}
    assert normalize_metadata(None) == {}


# ------------------------------------------------------------------------------------------- artifacts
def test_load_runner_dispatch(detectors, tmp_path):
    d = detectors["yolo26n"]
    assert runner_class(d.onnx) is OnnxRuntimeRunner
    assert runner_class(d.ov) is OpenVinoRunner
    xml = next(d.ov.glob("*.xml"))
    assert isinstance(load_runner(xml, device="CPU"), OpenVinoRunner)
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"\x00" * 64)
    assert isinstance(load_runner(engine, check_fingerprint=False), TensorRtRunner)
    with pytest.raises(ModelError, match="does not exist"):
        load_runner(tmp_path / "nope.onnx")
    (tmp_path / "m.tflite").write_bytes(b"x")
    with pytest.raises(InputError, match="unknown model type"):
        load_runner(tmp_path / "m.tflite")
    with pytest.raises(InputError, match="does not take"):
        load_runner(d.onnx, device="CPU")


@pytest.mark.parametrize("keep", [0.5, 0.999, 20])
def test_truncated_onnx_is_model_error(detectors, tmp_path, keep):
    data = detectors["yolo11n"].onnx.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(ModelError, match="truncated.onnx"):
        load_runner(bad)


def test_corrupt_onnx_is_model_error(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError, match="garbage.onnx"):
        load_runner(garbage)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        load_runner(tmp_path / "empty.onnx")
    # Well framed (ir_version + a graph field) but the graph is junk: caught by ONNX Runtime at activate().
    framed = tmp_path / "framed.onnx"
    framed.write_bytes(b"\x08\x08" + b"\x3a\x04\xff\xff\xff\xff")
    runner = load_runner(framed)
    assert read_onnx_metadata(framed) == {}
    with pytest.raises(ModelError, match="framed.onnx"):
        runner.activate()
    assert not runner.is_active


def test_broken_openvino_ir_is_model_error(detectors, tmp_path):
    ir = tmp_path / "ir"
    shutil.copytree(detectors["yolo11n"].ov, ir)
    xml = next(ir.glob("*.xml"))
    weights = xml.with_suffix(".bin")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"\.bin is truncated"):
        load_runner(ir)
    weights.write_bytes(data)
    xml.write_text(xml.read_text()[:5000])
    with pytest.raises(ModelError, match=xml.name):
        load_runner(xml)
    weights.unlink()
    with pytest.raises(ModelError, match="does not exist"):
        load_runner(ir)


# -------------------------------------------------------------------------------------------- TensorRT
FP = {"gpu_name": "Orin", "compute_capability": "8.7", "tensorrt_version": "10.3.0"}


def _fake_engine(tmp_path: Path, fingerprint: dict | None = FP, header: dict | None = None) -> Path:
    engine = tmp_path / "model.engine"
    body = b"\x00ftrt" + bytes(256)
    if header is not None:
        blob = json.dumps(header).encode()
        body = len(blob).to_bytes(4, "little") + blob + body
    engine.write_bytes(body)
    if fingerprint is not None:
        fingerprint_path(engine).write_text(json.dumps(fingerprint))
    return engine


def test_tensorrt_missing_is_a_clear_tool_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    runner = load_runner(_fake_engine(tmp_path))
    with pytest.raises(ToolError, match="TensorRT is not installed here") as info:
        runner.activate()
    assert "\n" not in str(info.value)
    assert not runner.is_active
    with pytest.raises(ToolError, match="TensorRT is not installed here"):
        current_device_fingerprint()


def test_tensorrt_without_usable_gpu_is_a_tool_error(tmp_path, monkeypatch):
    """TensorRT importable but no CUDA device (or no CUDA binding): a ToolError, not a crash."""
    if _cuda_device_count() > 0:
        pytest.skip("a CUDA device is present")
    fake_trt = types.SimpleNamespace(
        __version__="10.3.0", ICudaEngine=type("ICudaEngine", (), {"num_io_tensors": 0})
    )
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    with pytest.raises(ToolError, match="CUDA"):
        TensorRtRunner(_fake_engine(tmp_path)).activate()


def _cuda_device_count() -> int:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return 0
    err, count = cudart.cudaGetDeviceCount()
    return int(count) if err == cudart.cudaError_t.cudaSuccess else 0


def test_fingerprint_comparison(tmp_path):
    assert compare_fingerprints(FP, dict(FP)) == []
    assert (
        compare_fingerprints(FP, {**FP, "tensorrt_version": "10.3.0.30", "compute_capability": "sm_87"}) == []
    )
    assert compare_fingerprints({**FP, "compute_capability": [8, 7]}, FP) == []
    problems = compare_fingerprints(
        FP, {"gpu_name": "NVIDIA A2", "compute_capability": "8.6", "tensorrt_version": "10.1"}
    )
    assert len(problems) == 3 and "compute capability 8.7 (this device: 8.6)" in problems
    assert compare_fingerprints({"gpu_name": "Orin"}, FP) == [
        "the engine fingerprint has no compute_capability",
        "the engine fingerprint has no tensorrt_version",
    ]

    engine = _fake_engine(tmp_path)
    assert fingerprint_path(engine).name == "model.engine.json"
    assert check_engine_fingerprint(engine, current=FP) == FP
    with pytest.raises(ModelError, match=r"model\.engine was built for another device: TensorRT 10\.3\.0"):
        check_engine_fingerprint(engine, current={**FP, "tensorrt_version": "10.4.0"})
    fingerprint_path(engine).write_text(json.dumps({"fingerprint": FP, "precision": "fp16"}))
    assert check_engine_fingerprint(engine, current=FP) == FP
    fingerprint_path(engine).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        check_engine_fingerprint(engine, current=FP)
    fingerprint_path(engine).unlink()
    with pytest.raises(ModelError, match="no fingerprint model.engine.json"):
        check_engine_fingerprint(engine, current=FP)


def test_engine_header_metadata(tmp_path):
    header = {"names": {"0": "scratch"}, "imgsz": [640, 640], "stride": 32, "end2end": True, "batch": 1}
    engine = _fake_engine(tmp_path, header=header)
    offset, raw = read_engine_header(engine)
    assert raw == header and offset == 4 + len(json.dumps(header).encode())
    meta = TensorRtRunner(engine).metadata
    assert meta["names"] == {0: "scratch"} and meta["end2end"] is True
    plain = tmp_path / "plain"
    plain.mkdir()
    assert read_engine_header(_fake_engine(plain)) == (0, {})
    (tmp_path / "empty.engine").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        load_runner(tmp_path / "empty.engine")


def test_tensorrt_runner_matches_onnxruntime(detectors, images, tmp_path):
    """Full TensorRT path; runs only where TensorRT and a CUDA GPU are present (e.g. on the Jetson)."""
    trt = pytest.importorskip("tensorrt")
    if _cuda_device_count() == 0:
        pytest.skip("no CUDA device")
    d = detectors["yolo11n"]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(d.onnx.read_bytes()), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)  # plain FP32, comparable with ONNX Runtime
    engine = tmp_path / "yolo11n.engine"
    engine.write_bytes(bytes(builder.build_serialized_network(network, config)))
    fingerprint_path(engine).write_text(json.dumps(current_device_fingerprint()))

    batch, _ = preprocess(images[:1], IMGSZ)
    with OnnxRuntimeRunner(d.onnx) as ort_runner, load_runner(engine) as trt_runner:
        assert trt_runner.input_metadata() == ort_runner.input_metadata()
        want = ort_runner.infer(batch)["output0"]
        for _ in range(2):
            got = trt_runner.infer(batch)["output0"]
            np.testing.assert_allclose(got, want, atol=1e-3)
        assert trt_runner.last_inference_time > 0 and not math.isnan(trt_runner.load_time_s)


class _FakeCuda:
    """Host-memory stand-in for the CUDA calls the TensorRT runner makes."""

    def __init__(self):
        self.mem: dict[int, np.ndarray] = {}
        self.freed: list[int] = []
        self.closed = False

    def properties(self, device):
        return "FakeGPU", 8, 7

    def stream_create(self):
        return "stream", 7

    def stream_sync(self, stream):
        pass

    def stream_destroy(self, stream):
        pass

    def malloc(self, nbytes):
        ptr = 0x1000 * (len(self.mem) + 1)
        self.mem[ptr] = np.zeros(nbytes, np.uint8)
        return ptr, ptr

    def free(self, handle):
        self.freed.append(handle)

    def host_alloc(self, nbytes):
        arr = np.zeros(nbytes, np.uint8)
        return arr, arr

    def host_free(self, handle):
        pass

    def h2d(self, dst, src, stream):
        self.mem[dst][: src.nbytes] = src

    def d2h(self, dst, src, stream):
        dst[:] = self.mem[src][: dst.nbytes]

    def close(self):
        self.closed = True


def _fake_tensorrt(cuda: _FakeCuda) -> types.SimpleNamespace:
    """TensorRT 10's name-based API for an engine mapping images (N<=4, 3, 8, 8) to output0 (N, 5) = 2*x[:, :5]."""

    class Context:
        def __init__(self):
            self.shapes = {"images": (1, 3, 8, 8)}
            self.addr = {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return 1 <= shape[0] <= 4 and tuple(shape[1:]) == (3, 8, 8)

        def get_tensor_shape(self, name):
            return (self.shapes["images"][0], 5)

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            assert stream_handle == 7
            n = self.shapes["images"][0]
            x = cuda.mem[self.addr["images"]][: n * 3 * 8 * 8 * 4].view(np.float32).reshape(n, -1)
            y = (2 * x[:, :5]).astype(np.float32)
            cuda.mem[self.addr["output0"]][: y.nbytes] = y.reshape(-1).view(np.uint8)
            return True

    class Engine:
        num_io_tensors = 2
        tensors = {"images": ("in", (-1, 3, 8, 8)), "output0": ("out", (-1, 5))}

        def get_tensor_name(self, i):
            return list(self.tensors)[i]

        def get_tensor_mode(self, name):
            return self.tensors[name][0]

        def get_tensor_dtype(self, name):
            return np.float32

        def get_tensor_shape(self, name):
            return self.tensors[name][1]

        def get_tensor_profile_shape(self, name, profile):
            return [(1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8)]

        def create_execution_context(self):
            return Context()

    class Logger:
        WARNING = 2

        def __init__(self, level):
            assert level == self.WARNING

    class Runtime:
        def __init__(self, logger):
            assert isinstance(logger, Logger)

        def deserialize_cuda_engine(self, blob):
            return Engine() if blob.startswith(b"\x00ftrt") else None

    return types.SimpleNamespace(
        __version__="10.3.0.26",
        ICudaEngine=Engine,
        TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"),
        Logger=Logger,
        Runtime=Runtime,
        nptype=lambda dtype: dtype,
    )


def test_tensorrt_runner_logic_with_fake_backend(tmp_path, monkeypatch):
    """Drives the runner through a fake TensorRT 10 + CUDA: fingerprint gate, header skipping, buffers at the
    profile maximum, dynamic batch, output copies, and clean release. The real path runs on the device."""
    import edge_lora.runtime.tensorrt_rt as trt_rt

    cuda = _FakeCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(cuda))
    monkeypatch.setattr(trt_rt, "_open_cuda", lambda device: cuda)
    fp = {"gpu_name": "FakeGPU", "compute_capability": "8.7", "tensorrt_version": "10.3.0"}
    engine = _fake_engine(
        tmp_path, fingerprint={**fp, "tensorrt_version": "10.4.0"}, header={"imgsz": [8, 8]}
    )
    with pytest.raises(ModelError, match="TensorRT 10.4.0 \\(this device: 10.3.0.26\\)"):
        TensorRtRunner(engine).activate()
    assert cuda.closed

    fingerprint_path(engine).write_text(json.dumps(fp))
    cuda.closed = False
    rng = np.random.default_rng(0)
    with load_runner(engine) as runner:
        assert runner.metadata["imgsz"] == [8, 8] and runner.fingerprint == fp
        assert runner.input_metadata() == {"images": (np.dtype(np.float32), (None, 3, 8, 8))}
        assert runner.output_metadata() == {"output0": (np.dtype(np.float32), (None, 5))}
        for n in (1, 3, 1, 4):
            x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
            out = runner.infer(x)["output0"]
            np.testing.assert_array_equal(out, 2 * x.reshape(n, -1)[:, :5])
        kept = runner.infer(x)["output0"]
        shared = runner.infer(x[:1], copy_outputs=False)["output0"]
        assert shared.shape == (1, 5) and kept.shape == (4, 5)
        np.testing.assert_array_equal(kept, 2 * x.reshape(4, -1)[:, :5])  # copies survive later calls
        with pytest.raises(InputError, match="optimization profile"):
            runner.infer(np.zeros((5, 3, 8, 8), np.float32))
        with pytest.raises(InputError, match="shape"):
            runner.infer(np.zeros((1, 3, 8, 9), np.float32))
    assert cuda.closed and sorted(cuda.freed) == sorted(cuda.mem)
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"not an engine at all")
    with pytest.raises(ModelError, match="cannot deserialize"):
        TensorRtRunner(bad, check_fingerprint=False).activate()
