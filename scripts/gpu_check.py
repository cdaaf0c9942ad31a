"""The GPU check's steps (scripts/gpu_check.sh runs this; see there for the machine and the environment).

    python3 scripts/gpu_check.py run --device 0 --work /tmp/gpu_check --out "$OUT" --budget 290
    python3 scripts/gpu_check.py cli --probe P.json -- train ...   # edge-lora's CLI in-process, AMP probe on

``run`` installs what is missing from carried wheels, then runs edge-lora end to end on the synthetic demo
data: base (full training from yolo26n.yaml), LoRA adapter (frozen base), merge, cpu-onnxruntime bundle, verify,
line runtime, and -- only where ``tensorrt`` imports -- the TensorRT plan, engine build, TensorRT runner and
the fingerprint refusal. Every step is a subprocess in its own process group with a timeout cut to what is
left of ``--budget``; a failed step fails the steps that need it and the rest go on. The summary goes to
OUT/gpu_check.json and is printed at the end. The orchestrating process itself is stdlib only.

``cli`` runs ``edge_lora.cli.main`` in this process after adding an Ultralytics callback that records what
the trainer really did: ``trainer.amp``, the GradScaler, the dtype a conv (and a LoRA branch) produced inside
the first training step, and whether every frozen tensor of the model and the EMA is bit-identical at the
end of training to what it was at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEMA = 1
LOG_TAIL_BYTES = 4 * 1024 * 1024  # per log copied to OUT (16 MiB per file is the transfer limit)

POLARS_STUB = '''"""Stand-in for polars, written by scripts/gpu_check.py (the real wheel is ~53 MB, over the carry limit).

Ultralytics imports polars only to copy results.csv into a full-training checkpoint (inside try/except) and
for plots (edge-lora turns them off). Any attribute raises ImportError, which those call sites catch.
"""

__version__ = "0+gpu-check-stub"


def __getattr__(name):
    raise ImportError(f"polars is a stub on this machine (scripts/gpu_check.py): polars.{name} is not available")
'''


# ------------------------------------------------------------------------------------------------ helpers
class Skip(Exception):
    """Raised by a step's check: the step could not be tried here (not a failure of the project)."""


def _now() -> float:
    return time.monotonic()


def _tail(path: Path, n: int = 2000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    text = data[-n:].decode("utf-8", "replace")
    return text.replace("\r", "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _sha256(path: Path) -> str | None:
    import hashlib

    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return None


def _num(x: Any, nd: int = 6) -> Any:
    return round(x, nd) if isinstance(x, float) else x


class Checker:
    """Runs the steps, keeps the budget, writes the summary."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = _now()
        self.deadline = self.t0 + args.budget
        self.work = Path(args.work).resolve()
        self.out = Path(args.out).resolve()
        self.logs = self.work / "logs"
        self.steps: list[dict[str, Any]] = []
        self.status: dict[str, str] = {}
        self.facts: dict[str, Any] = {}
        self.py = args.python
        self.env = dict(os.environ)
        self.cuda = args.device != "cpu"

    # ------------------------------------------------------------------------------------------ running
    def left(self) -> float:
        return self.deadline - _now()

    def step(
        self,
        name: str,
        cmd: list[str] | None,
        *,
        timeout: float,
        log: str,
        needs: tuple[str, ...] = (),
        ok_codes: tuple[int, ...] = (0,),
        check=None,
        min_time: float = 5.0,
        skip: str | None = None,
        counts: bool = True,
    ) -> dict[str, Any]:
        """Run one step (cmd None: only ``check``); record status, seconds, rc and what ``check`` returns.

        ``check(rc, output)`` returns a dict of key numbers; raising AssertionError fails the step. A step
        with ``counts=False`` (TensorRT where it is not installed, a fallback already taken) does not decide
        the overall ``ok``.
        """
        rec: dict[str, Any] = {"name": name}
        if not counts:
            rec["counts"] = False
        failed_needs = [n for n in needs if self.status.get(n) != "pass"]
        if skip is None and failed_needs:
            skip = f"needs {', '.join(failed_needs)}"
        if skip is None and self.left() < min_time:
            skip = f"time budget spent ({self.args.budget:.0f} s)"
        if skip is not None:
            rec.update(status="skip", reason=skip, seconds=0.0)
            return self._record(rec)
        limit = max(1.0, min(timeout, self.left()))
        logfile = self.logs / f"{log}.log"
        start = _now()
        rc: int | None = 0
        output = ""
        if cmd is not None:
            with open(logfile, "ab") as f:
                f.write(f"\n===== {name} (timeout {limit:.0f} s)\n$ {' '.join(map(str, cmd))}\n".encode())
                f.flush()
                pos = f.tell()
                proc = subprocess.Popen(
                    [str(c) for c in cmd],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.work,
                    env=self.env,
                    start_new_session=True,  # own process group: a timeout kills dataloader workers too
                )
                try:
                    rc = proc.wait(timeout=limit)
                except subprocess.TimeoutExpired:
                    rc = None
                    self._kill(proc)
            with open(logfile, "rb") as f:
                f.seek(pos)
                output = f.read().decode("utf-8", "replace")
            rec["rc"] = rc
        try:
            if rc is None:
                raise AssertionError(f"timed out after {limit:.0f} s")
            if rc not in ok_codes:
                raise AssertionError(f"exit code {rc}: {self._last_error(output)}")
            if check is not None:
                rec.update(check(rc, output) or {})
            rec["status"] = "pass"
        except Skip as exc:
            rec.update(status="skip", reason=str(exc)[:600], counts=False)
        except AssertionError as exc:
            rec.update(getattr(exc, "data", {}))
            rec["status"] = "fail"
            rec["reason"] = str(exc)[:600]
        except Exception as exc:  # a bug in a check must not stop the summary
            rec["status"] = "fail"
            rec["reason"] = f"check raised {type(exc).__name__}: {exc}"[:600]
        rec["seconds"] = round(_now() - start, 2)
        return self._record(rec)

    def _record(self, rec: dict[str, Any]) -> dict[str, Any]:
        self.steps.append(rec)
        self.status[rec["name"]] = rec["status"]
        extra = f" ({rec['reason']})" if rec.get("reason") else ""
        print(
            f"[gpu_check {(_now() - self.t0):6.1f}s] {rec['name']}: {rec['status']} {rec.get('seconds', 0):.1f}s{extra}",
            flush=True,
        )
        self.write_summary()  # after every step: a killed run still leaves what it had
        return rec

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                proc.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                continue

    @staticmethod
    def _last_error(output: str) -> str:
        lines = [ln.strip() for ln in output.replace("\r", "\n").splitlines() if ln.strip()]
        for ln in reversed(lines):
            if ln.startswith(("error:", "Error", "ToolError", "RuntimeError")) or "Error:" in ln:
                return ln[:400]
        return (lines[-1] if lines else "no output")[:400]

    # ------------------------------------------------------------------------------------------ summary
    def write_summary(self, final: bool = False) -> dict[str, Any]:
        counted = [s for s in self.steps if s.get("counts", True)]
        summary = {
            "schema": SCHEMA,
            "kind": "edge-lora-gpu-check",
            "final": final,
            "ok": bool(self.steps) and all(s["status"] == "pass" for s in counted),
            "mode": "gpu" if self.cuda else "cpu",
            "device": self.args.device,
            "budget_s": self.args.budget,
            "wall_s": round(_now() - self.t0 + self.args.elapsed, 1),
            "passed": sum(s["status"] == "pass" for s in self.steps),
            "failed": sum(s["status"] == "fail" for s in self.steps),
            "skipped": sum(s["status"] == "skip" for s in self.steps),
            **self.facts,
            "steps": self.steps,
        }
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n")
        tmp.replace(self.out / "gpu_check.json")
        return summary

    def finish(self) -> dict[str, Any]:
        summary = self.write_summary(final=True)
        # logs (tails) and a small archive of the records; OUT holds at most 8 files
        for log in sorted(self.logs.glob("*.log")):
            data = log.read_bytes()
            (self.out / log.name).write_bytes(data[-LOG_TAIL_BYTES:])
        with tarfile.open(self.out / "records.tar.gz", "w:gz") as tar:
            for p in sorted(self.work.rglob("*")):
                if not p.is_file() or p.stat().st_size > 2 * 1024 * 1024:
                    continue
                rel = p.relative_to(self.work)
                if rel.parts[0] in ("data", "logs", "yolo_config", "src") or ".cache" in rel.parts:
                    continue
                if p.suffix in (".json", ".md", ".yaml", ".txt", ".csv", ".jsonl", ".sh"):
                    tar.add(p, arcname=str(rel))
        return summary

    # ------------------------------------------------------------------------------------------ commands
    def cli(self, *args: Any, probe: str | None = None) -> list[str]:
        cmd = [self.py, str(HERE / "gpu_check.py"), "cli"]
        if probe:
            cmd += ["--probe", str(self.work / probe)]
        return cmd + ["--", *map(str, args)]


# ------------------------------------------------------------------------------------------------- steps
def run_all(args: argparse.Namespace) -> dict[str, Any]:
    c = Checker(args)
    w = c.work
    w.mkdir(parents=True, exist_ok=True)
    c.logs.mkdir(parents=True, exist_ok=True)
    c.facts["started_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    c.facts["settings"] = {
        k: getattr(args, k)
        for k in (
            "imgsz",
            "train_images",
            "val_images",
            "base_seconds",
            "base_epochs",
            "lora_seconds",
            "lora_epochs",
            "batch",
            "workers",
            "install",
        )
    }
    build_info = Path(args.whl) / "BUILD_INFO"
    if build_info.is_file():
        c.facts["wheels_build_info"] = dict(
            ln.split(": ", 1) for ln in build_info.read_text().splitlines() if ": " in ln
        )

    install(c, args)
    environment(c)
    if c.cuda and "tensorrt" in (c.facts.get("env") or {}):
        # TensorRT imports here: its steps (plan, engine build, bench, refusal) need ~2 minutes of the budget
        for k, cap in (("base_seconds", 30.0), ("lora_seconds", 20.0)):
            if getattr(args, k) > cap:
                setattr(args, k, cap)
                c.facts["settings"][k] = f"{cap} (shortened: tensorrt imports, its steps need the time)"

    # ---- data, base, adapter
    data = w / "data"
    c.step(
        "demo_data",
        c.cli(
            "demo-data", data, "--train", args.train_images, "--val", args.val_images, "--imgsz", args.imgsz
        ),
        timeout=90,
        log="train",
        needs=("env",),
        check=lambda rc, out: {"line_b_yaml": (data / "line_b.yaml").is_file() or _fail("no line_b.yaml")},
    )
    dev = ["--device", args.device, "--workers", args.workers, "--batch", args.batch, "--imgsz", args.imgsz]

    def length(seconds: float, epochs: int) -> list[str]:
        # Ultralytics' time mode (hours) bounds the wall time and re-plans the epochs to fill it.
        return ["--epochs", epochs] + (["--set", f"time={seconds / 3600:.6f}"] if seconds > 0 else [])

    base_dir = w / "base"
    c.step(
        "base_train",
        c.cli(
            "train",
            "--full",
            "--base",
            "yolo26n.yaml",
            "--data",
            data / "line_a.yaml",
            "--out",
            base_dir,
            *dev,
            *length(args.base_seconds, args.base_epochs),
            "--json",
            w / "base_train.json",
            probe="probe_base.json",
        ),
        timeout=args.base_seconds + 120 if args.base_seconds > 0 else 600,
        log="train",
        needs=("demo_data",),
        check=lambda rc, out: check_train(c, w / "base_train.json", w / "probe_base.json", out, lora=False),
    )
    base_pt = base_dir / "model.pt"
    base_sha = _sha256(base_pt)
    adapter = w / "adapters" / "line_b"
    c.step(
        "lora_train",
        c.cli(
            "train",
            "--base",
            base_pt,
            "--data",
            data / "line_b.yaml",
            "--out",
            adapter,
            "--rank",
            8,
            "--alpha",
            16,
            *dev,
            *length(args.lora_seconds, args.lora_epochs),
            "--json",
            w / "lora_train.json",
            probe="probe_lora.json",
        ),
        timeout=args.lora_seconds + 120 if args.lora_seconds > 0 else 600,
        log="train",
        needs=("base_train",),
        check=lambda rc, out: check_train(c, w / "lora_train.json", w / "probe_lora.json", out, lora=True),
    )
    c.step(
        "base_bit_exact",
        None,
        timeout=30,
        log="train",
        needs=("lora_train",),
        check=lambda rc, out: check_bit_exact(c, adapter, base_pt, base_sha),
    )

    # ---- merge, bundle
    c.step(
        "merge_parity",
        c.cli(
            "merge",
            "--base",
            base_pt,
            "--adapter",
            adapter,
            "--out",
            w / "merged.pt",
            "--json",
            w / "merge.json",
        ),
        timeout=120,
        log="build",
        needs=("lora_train",),
        check=lambda rc, out: check_merge(w / "merge.json"),
    )
    dist = w / "dist"
    runs = ["--runs", args.runs, "--warmup", max(args.runs // 10, 1)]
    c.step(
        "build_cpu_onnxruntime",
        c.cli(
            "build",
            "--base",
            base_pt,
            "--adapter",
            adapter,
            "--data",
            data / "line_b.yaml",
            "--target",
            "cpu-onnxruntime",
            "--set",
            f"imgsz={args.imgsz}",
            "--set",
            "calibration=fast",
            "--out",
            dist,
            *runs,
            "--json",
            w / "build_cpu.json",
        ),
        timeout=240,
        log="build",
        needs=("lora_train",),
        ok_codes=(0, 1),  # 1: a gate failed, check says which
        check=lambda rc, out: check_build(w / "build_cpu.json"),
    )
    bundle = _bundle_path(w / "build_cpu.json") or dist / "line_b-cpu-onnxruntime"
    c.step(
        "verify_bundle",
        c.cli("verify", bundle, "--json", w / "verify_cpu.json"),
        timeout=60,
        log="build",
        needs=("build_cpu_onnxruntime",),
        check=lambda rc, out: check_verify(w / "verify_cpu.json"),
    )
    c.step(
        "run_bundle",
        c.cli(
            "run",
            bundle,
            "--source",
            data / "line_b" / "images" / "val",
            "--max-frames",
            8,
            "--out",
            w / "run.jsonl",
            "--json",
            w / "run_summary.json",
        ),
        timeout=60,
        log="build",
        needs=("verify_bundle",),
        check=lambda rc, out: check_run(w / "run_summary.json", w / "run.jsonl"),
    )

    # ---- the CUDA memory path of the TensorRT runner, and TensorRT itself
    c.step(
        "cuda_runtime_binding",
        [c.py, str(HERE / "gpu_check.py"), "cuda", "--device", "0", "--json", w / "cuda_binding.json"],
        timeout=60,
        log="tensorrt",
        needs=("env",),
        ok_codes=(0, 3),
        skip=None if c.cuda else "cpu mode",
        counts=c.cuda,
        check=lambda rc, out: check_cuda_binding(w / "cuda_binding.json"),
    )
    tensorrt(c, args, base_pt, adapter, data)
    return c.finish()


def _crash_summary(args: argparse.Namespace, tb: str) -> dict[str, Any]:
    out = Path(args.out) / "gpu_check.json"
    summary = _read_json(out) or {
        "schema": SCHEMA,
        "kind": "edge-lora-gpu-check",
        "mode": args.device,
        "steps": [],
        "passed": 0,
        "failed": 0,
        "skipped": 0,
        "wall_s": None,
    }
    summary["steps"].append({"name": "orchestrator", "status": "fail", "seconds": 0.0, "reason": tb[-1500:]})
    summary.update(ok=False, final=True, failed=summary.get("failed", 0) + 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


class CheckFailed(AssertionError):
    """A step's check failed; ``data`` (its key numbers) still goes into the summary."""

    def __init__(self, msg: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(msg)
        self.data = data or {}


def _fail(msg: str, data: dict[str, Any] | None = None):
    raise CheckFailed(msg, data)


def install(c: Checker, args: argparse.Namespace) -> None:
    """Dependency wheels into SITE, a polars stub if polars is missing, edge-lora built from the tree."""
    site, proj = Path(args.site), Path(args.site + "_edge_lora")
    whl = Path(args.whl)
    if args.install == "0":
        c.step(
            "install",
            None,
            timeout=1,
            log="install",
            counts=False,
            skip="GPU_CHECK_INSTALL=0 (the Python as it is)",
        )
        return
    wheels = sorted(str(p) for p in whl.glob("*.whl") if not p.name.startswith("edge_lora-"))
    for d in (site, proj):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    pythonpath = [str(proj), str(site)] + [p for p in c.env.get("PYTHONPATH", "").split(os.pathsep) if p]
    c.env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    c.env["PATH"] = f"{proj / 'bin'}{os.pathsep}{c.env.get('PATH', '')}"
    pip = [
        c.py,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--disable-pip-version-check",
    ]
    c.step(
        "install_wheels",
        pip + ["--upgrade", "--target", site, *wheels] if wheels else None,
        timeout=150,
        log="install",
        skip=None if wheels else f"no wheels in {whl} (run scripts/gpu_wheels.sh where pip reaches PyPI)",
        check=lambda rc, out: {"wheels": [Path(p).name for p in wheels]},
    )
    # polars: see POLARS_STUB
    try:
        has_polars = (
            subprocess.run(
                [c.py, "-c", "import polars"], cwd=c.work, env=c.env, capture_output=True, timeout=60
            ).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        has_polars = False
    if not has_polars:
        (site / "polars").mkdir(exist_ok=True)
        (site / "polars" / "__init__.py").write_text(POLARS_STUB)
        c.facts["polars"] = "stub (scripts/gpu_check.py POLARS_STUB)"
    else:
        c.facts["polars"] = "installed"
    # edge-lora from the travelling tree (what this session changed), else the carried wheel
    src = c.work / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "edge_lora", "targets", "calib"):
        p = ROOT / name
        (
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__"))
            if p.is_dir()
            else shutil.copy2(p, src / name)
        )
    for p in ROOT.glob("LICEN[CS]E*"):
        shutil.copy2(p, src / p.name)
    rec = c.step(
        "install_edge_lora_from_tree",
        pip + ["--no-build-isolation", "--target", proj, src],
        timeout=120,
        log="install",
    )
    c.facts["edge_lora_installed_from"] = "the travelling tree"
    if rec["status"] == "pass":
        return
    carried = sorted(whl.glob("edge_lora-*.whl"))
    shutil.rmtree(proj, ignore_errors=True)
    proj.mkdir()
    wheel = c.step(
        "install_edge_lora_wheel",
        pip + ["--target", proj, carried[-1]] if carried else None,
        timeout=60,
        log="install",
        skip=None if carried else f"no edge_lora wheel in {whl}",
    )
    if wheel["status"] == "pass":
        # The carried wheel stands in: the tree build's failure stays on record but does not decide ``ok``.
        rec["counts"] = False
        rec["note"] = "edge-lora installed from the carried wheel instead (see install_edge_lora_wheel)"
        c.facts["edge_lora_installed_from"] = f"carried wheel {carried[-1].name} (older than the tree?)"


ENV_SNIPPET = r"""
import importlib, importlib.metadata as md, json, platform, sys
from pathlib import Path
out = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform()}
v = {}
for name in ("torch", "torchvision", "ultralytics", "edge-lora", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu",
             "onnxslim", "peft", "safetensors", "pydantic", "faster-coco-eval", "opencv-python-headless",
             "opencv-python", "polars", "tensorrt", "cuda-python", "cuda-bindings", "pycuda", "openvino"):
    try:
        v[name] = md.version(name)
    except md.PackageNotFoundError:
        pass
out["versions"] = v
import torch
out["cuda_available"] = torch.cuda.is_available()
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    out["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
                  "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
import onnxruntime as ort
out["onnxruntime_providers"] = ort.get_available_providers()
import edge_lora, ultralytics
from edge_lora.cli.main import main  # every command registers
from importlib import resources  # the package-dir mapped data (targets/, calib/) shipped with the package
assert resources.files("edge_lora.targets").joinpath("cpu-onnxruntime.yaml").is_file()
assert resources.files("edge_lora.calib").joinpath("fast.yaml").is_file()
out["edge_lora_file"] = edge_lora.__file__
try:
    import tensorrt
    out["tensorrt"] = tensorrt.__version__
except Exception as exc:
    out["tensorrt_error"] = f"{type(exc).__name__}: {exc}"
# Ultralytics keeps its weights/runs/datasets folders in YOLO_CONFIG_DIR's settings: point them into the work dir
from ultralytics.utils import SETTINGS
SETTINGS.update({k: str(Path.cwd() / v) for k, v in (("weights_dir", "weights"), ("runs_dir", "runs"),
                                                      ("datasets_dir", "datasets"))})
out["ultralytics_settings"] = {k: SETTINGS[k] for k in ("weights_dir", "runs_dir", "datasets_dir")}
print("GPU_CHECK_ENV " + json.dumps(out))
"""


def environment(c: Checker) -> None:
    def check(rc: int, out: str) -> dict[str, Any]:
        line = next((ln for ln in out.splitlines() if ln.startswith("GPU_CHECK_ENV ")), None)
        if line is None:
            _fail("no environment line")
        env = json.loads(line.split(" ", 1)[1])
        c.facts["env"] = env
        if c.cuda and not env.get("cuda_available"):
            _fail("torch sees no CUDA device")
        return {"torch": env["versions"].get("torch"), "gpu": env.get("gpu", {}).get("name")}

    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        c.facts["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        c.facts["nvidia_smi"] = f"unavailable: {exc}"
    c.facts["host"] = {"cpus": os.cpu_count(), "machine": platform.machine()}
    c.step("env", [c.py, "-c", ENV_SNIPPET], timeout=120, log="install", needs=(), check=check)


# ------------------------------------------------------------------------------------------------ checks
def check_train(c: Checker, result_json: Path, probe_json: Path, out: str, lora: bool) -> dict[str, Any]:
    res = _read_json(result_json) or _fail(f"no {result_json.name}")
    probe = _read_json(probe_json) or {}
    amp_lines = sorted({ln.strip()[:200] for ln in out.replace("\r", "\n").splitlines() if "AMP:" in ln})
    rec: dict[str, Any] = {
        "epochs": res.get("epochs"),
        "train_seconds": _num(res.get("seconds"), 1),
        "metrics": res.get("metrics"),
        "trainable_params": res.get("trainable_params"),
        "trainable_share": _num(res.get("trainable_share"), 4),
        "artifact_bytes": res.get("artifact_bytes"),
        "peak_rss_mb": _num(res.get("peak_rss_mb"), 0),
        "amp": probe.get("amp"),
        "scaler_enabled": probe.get("scaler_enabled"),
        "scaler_scale_end": probe.get("scaler_scale_end"),
        "first_step_dtypes": probe.get("first_step_dtypes"),
        "device": probe.get("device"),
        "cuda_max_memory_mib": probe.get("cuda_max_memory_mib"),
        "epoch_seconds_mean": probe.get("epoch_seconds_mean"),
        "ultralytics_amp_log": amp_lines,
    }
    if lora:
        rec["frozen_tensors_verified"] = res.get("frozen_tensors_verified")
        rec["probe_frozen_identical"] = probe.get("frozen_identical")
    c.facts.setdefault("amp", {})["lora" if lora else "base"] = {
        k: rec[k] for k in ("amp", "scaler_enabled", "first_step_dtypes", "device")
    }
    if (res.get("metrics") or {}).get("mAP50-95", 0.0) < 0.05:
        rec["warning"] = "learned little (val mAP50-95 < 0.05): parity and gates below are weak evidence"
    if not probe:
        _fail("the AMP probe wrote nothing (no on_train_start?)", rec)
    if c.cuda:
        if not str(probe.get("device", "")).startswith("cuda"):
            _fail(f"trained on {probe.get('device')}, not on the GPU", rec)
        if not probe.get("amp"):
            _fail(f"AMP was off on CUDA (trainer.amp={probe.get('amp')}; {amp_lines})", rec)
        dtypes = probe.get("first_step_dtypes") or {}
        if dtypes.get("conv") != "torch.float16":
            _fail(
                f"a conv produced {dtypes.get('conv')} in the first training step, not float16 (autocast off?)",
                rec,
            )
    if lora:
        if not res.get("frozen_tensors_verified"):
            _fail("frozen_tensors_verified is 0", rec)
        fi = probe.get("frozen_identical") or {}
        if fi.get("model_changed") or fi.get("ema_changed"):
            _fail(f"probe: frozen tensors changed: {fi}", rec)
    return rec


def check_bit_exact(c: Checker, adapter: Path, base_pt: Path, base_sha_before: str | None) -> dict[str, Any]:
    meta = _read_json(adapter / "edge_lora.json") or _fail("no edge_lora.json")
    recorded = (meta.get("base") or {}).get("sha256")
    now = _sha256(base_pt)
    rec = {
        "frozen_tensors_verified": meta.get("frozen_tensors_verified"),
        "base_sha256_recorded": recorded,
        "base_file_unchanged": base_sha_before == now,
        "recorded_matches_base": recorded == now,
    }
    if not meta.get("frozen_tensors_verified"):
        _fail("edge_lora.json records no verified frozen tensors")
    if not (rec["base_file_unchanged"] and rec["recorded_matches_base"]):
        _fail(f"base checkpoint hash moved: {rec}")
    return rec


def check_merge(path: Path) -> dict[str, Any]:
    m = _read_json(path) or _fail("no merge.json")
    p = m.get("parity", {})
    rec = {
        "passed": p.get("passed"),
        "max_rel": p.get("max_rel"),
        "max_abs": p.get("max_abs"),
        "tolerance": p.get("tolerance"),
        "images": p.get("images"),
        "detections_identical": p.get("detections_identical"),
        "merged_layers": m.get("merged_layers"),
        "warnings": m.get("warnings"),
    }
    if not p.get("passed"):
        _fail("parity failed", rec)
    return rec


def _bundle_path(build_json: Path) -> Path | None:
    b = _read_json(build_json)
    try:
        return Path(b["bundles"][0]["bundle"])
    except (TypeError, KeyError, IndexError):
        return None


def _candidate_numbers(cand: dict[str, Any]) -> dict[str, Any]:
    keep = {}
    for k, v in cand.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            keep[k] = _num(v, 5)
        elif isinstance(v, list) and len(v) <= 6 and all(isinstance(x, str) for x in v):
            keep[k] = v
    return keep


def check_build(path: Path) -> dict[str, Any]:
    b = _read_json(path) or _fail(f"no {path.name}")
    bundles = b.get("bundles") or _fail("no bundles in the build result")
    out = []
    for bd in bundles:
        out.append(
            {
                "target": bd.get("target"),
                "passed": bd.get("passed"),
                "chosen": bd.get("chosen"),
                "bundle": bd.get("bundle"),
                "candidates": [_candidate_numbers(x) for x in bd.get("candidates", [])],
                "stages": {
                    s.get("name"): s.get("seconds") for s in bd.get("stages", []) if isinstance(s, dict)
                },
                "notes": bd.get("notes"),
            }
        )
    if not all(x["passed"] for x in out):
        failed = [(x["target"], x["chosen"]) for x in out if not x["passed"]]
        raise CheckFailed(
            f"a bundle failed its gates: {failed} (numbers: bundles[].candidates)", {"bundles": out}
        )
    return {"bundles": out}


def check_verify(path: Path) -> dict[str, Any]:
    v = _read_json(path) or _fail("no verify json")
    checks = v.get("checks") or []
    rec = {"problems": v.get("problems"), "warnings": v.get("warnings"), "checks": len(checks)}
    if v.get("problems"):
        _fail(f"verify: {v['problems'][:3]}")
    return rec


def check_run(summary: Path, jsonl: Path) -> dict[str, Any]:
    s = _read_json(summary) or _fail("no run summary")
    lines = jsonl.read_text().splitlines() if jsonl.is_file() else []
    rec = {k: _num(v, 3) for k, v in s.items() if isinstance(v, (int, float, str, bool))}
    rec["jsonl_lines"] = len(lines)
    if not lines:
        _fail("no frames in run.jsonl")
    return rec


# ---------------------------------------------------------------------------------------------- tensorrt
def tensorrt(c: Checker, args: argparse.Namespace, base_pt: Path, adapter: Path, data: Path) -> None:
    w = c.work
    reason = None
    if not c.cuda:
        reason = "cpu mode"
    else:
        env = c.facts.get("env") or {}
        if "tensorrt" not in env:
            err = (env.get("tensorrt_error") or "the env step did not run")[:300]
            reason = f"tensorrt does not import here ({err}); its wheels are far over the carry limit"
    c.facts["tensorrt"] = {"ran": reason is None, "skipped_reason": reason}
    names = ("trt_plan_build", "trt_engine_on_device", "trt_runner_bench", "trt_fingerprint_refusal")
    if reason:
        for n in names:
            c.step(n, None, timeout=1, log="tensorrt", skip=reason, counts=False)
        return
    dist = w / "dist_trt"
    c.step(
        "trt_plan_build",
        c.cli(
            "build",
            "--base",
            base_pt,
            "--adapter",
            adapter,
            "--data",
            data / "line_b.yaml",
            "--target",
            "nvidia-gpu",
            "--set",
            f"imgsz={args.imgsz}",
            "--out",
            dist,
            "--runs",
            50,
            "--warmup",
            5,
            "--json",
            w / "build_trt.json",
        ),
        timeout=240,
        log="tensorrt",
        needs=("lora_train",),
        ok_codes=(0, 1),
        check=lambda rc, out: {"rc": rc, **check_build_loose(w / "build_trt.json")},
    )
    bundle = _bundle_path(w / "build_trt.json") or dist / "line_b-nvidia-gpu"
    c.step(
        "trt_engine_on_device",
        c.cli(
            "build",
            "--on-device",
            bundle,
            "--data",
            data / "line_b.yaml",
            "--runs",
            200,
            "--warmup",
            20,
            "--json",
            w / "on_device_trt.json",
        ),
        timeout=300,
        log="tensorrt",
        needs=("trt_plan_build",),
        check=lambda rc, out: {"result": _small(_read_json(w / "on_device_trt.json"))},
    )
    engines = sorted(bundle.rglob("*.engine")) if bundle.is_dir() else []
    engine = engines[0] if engines else None
    c.step(
        "trt_runner_bench",
        c.cli("bench", engine, "--runs", 300, "--warmup", 30, "--json", w / "bench_trt.json")
        if engine
        else None,
        timeout=120,
        log="tensorrt",
        needs=("trt_engine_on_device",),
        skip=None if engine or c.status.get("trt_engine_on_device") != "pass" else "no .engine in the bundle",
        check=lambda rc, out: {"bench": _small(_read_json(w / "bench_trt.json"))},
    )
    tampered = w / "tampered"
    if engine is not None:
        tampered.mkdir(exist_ok=True)
        shutil.copy2(engine, tampered / "model.engine")
        fp = _read_json(Path(f"{engine}.json")) or {}
        target = fp["fingerprint"] if isinstance(fp.get("fingerprint"), dict) else fp
        target["gpu_name"] = "Tampered GPU 9000"
        (tampered / "model.engine.json").write_text(json.dumps(fp))

    def refused(rc: int, out: str) -> dict[str, Any]:
        if rc == 0:
            _fail("an engine with a tampered fingerprint ran")
        if "built for another device" not in out:
            _fail(f"refused, but not for the fingerprint: {Checker._last_error(out)}")
        return {"rc": rc, "message": Checker._last_error(out)}

    c.step(
        "trt_fingerprint_refusal",
        c.cli("bench", tampered / "model.engine", "--runs", 5, "--warmup", 1) if engine else None,
        timeout=60,
        log="tensorrt",
        needs=("trt_engine_on_device",),
        ok_codes=tuple(range(1, 256)),
        skip=None if engine or c.status.get("trt_engine_on_device") != "pass" else "no .engine in the bundle",
        check=refused,
    )


def check_cuda_binding(path: Path) -> dict[str, Any]:
    rec = _read_json(path) or _fail(f"no {path.name}")
    if "skipped" in rec:
        raise Skip(rec["skipped"])
    if not rec.get("roundtrip_equal"):
        _fail(f"host -> device -> host copy differs: {rec}")
    return rec


def check_build_loose(path: Path) -> dict[str, Any]:
    try:
        return check_build(path)
    except AssertionError as exc:
        b = _read_json(path)
        if not b:
            raise
        return {"gates": str(exc)[:300]}


def _small(obj: Any, depth: int = 0) -> Any:
    """A JSON value cut down to numbers and short strings (for the summary)."""
    if isinstance(obj, dict):
        if depth > 3:
            return "..."
        return {
            k: _small(v, depth + 1)
            for k, v in list(obj.items())[:40]
            if not isinstance(v, list) or len(v) <= 20
        }
    if isinstance(obj, list):
        return [_small(v, depth + 1) for v in obj[:20]]
    if isinstance(obj, str):
        return obj[:300]
    return _num(obj, 5)


# --------------------------------------------------------------------------------------- in-process parts
def install_probe(path: Path) -> None:
    """Add Ultralytics default callbacks that record what the trainer really did (see the module docstring)."""
    import torch
    from torch import nn
    from ultralytics.utils.callbacks import base

    state: dict[str, Any] = {"epochs": []}
    snap: dict[str, dict[str, torch.Tensor]] = {}

    def dump() -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, default=str))
        tmp.replace(path)

    def on_train_start(trainer: Any) -> None:
        scaler = getattr(trainer, "scaler", None)
        state.update(
            amp=bool(getattr(trainer, "amp", False)),
            amp_arg=str(getattr(trainer.args, "amp", None)),
            scaler_enabled=bool(scaler.is_enabled()) if scaler is not None else None,
            device=str(trainer.device),
            trainer=type(trainer).__name__,
        )
        model = trainer.model
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        state["trainable_tensors"] = len(trainable)
        if any("lora_" in n for n in trainable):  # the adapter trainer: snapshot everything frozen
            snap["model"] = {
                k: v.detach().clone()
                for k, v in model.state_dict().items()
                if k not in trainable and "lora_" not in k
            }
            ema = getattr(getattr(trainer, "ema", None), "ema", None)
            if ema is not None:
                snap["ema"] = {
                    k: v.detach().clone() for k, v in ema.state_dict().items() if k in snap["model"]
                }
        dtypes: dict[str, str] = {}
        hooks = []
        # A plain conv and an adapted one (the PEFT layer: edge-lora trains it as one conv with the merged
        # weight, edge_lora/train/merged_forward.py, so its lora_A/base_layer submodules are not called).
        conv = next(
            (
                m
                for n, m in model.named_modules()
                if isinstance(m, nn.Conv2d) and "lora_" not in n and not n.endswith("base_layer")
            ),
            None,
        )
        lora = next((m for m in model.modules() if hasattr(m, "lora_A") and len(m.lora_A)), None)
        for label, mod in (("conv", conv), ("lora_layer", lora)):
            if mod is not None:
                hooks.append(
                    mod.register_forward_hook(
                        lambda m, i, o, label=label: dtypes.setdefault(label, str(o.dtype)) and None
                    )
                )
        state["first_step_dtypes"] = dtypes
        state["_hooks"] = hooks
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        dump()

    def on_train_batch_end(trainer: Any) -> None:
        for h in state.pop("_hooks", []):
            h.remove()

    def on_fit_epoch_end(trainer: Any) -> None:
        state["epochs"].append(round(float(getattr(trainer, "epoch_time", 0) or 0), 2))

    def changed(model: Any, ref: dict[str, torch.Tensor]) -> list[str]:
        sd = model.state_dict()
        return [k for k, v in ref.items() if k not in sd or not torch.equal(sd[k].to(v.device), v)]

    def on_train_end(trainer: Any) -> None:
        scaler = getattr(trainer, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            state["scaler_scale_end"] = float(scaler.get_scale())
        if snap:
            mc = changed(trainer.model, snap["model"])
            ema = getattr(getattr(trainer, "ema", None), "ema", None)
            ec = changed(ema, snap["ema"]) if ema is not None and "ema" in snap else []
            state["frozen_identical"] = {
                "tensors": len(snap["model"]),
                "model_changed": len(mc),
                "ema_changed": len(ec),
                "examples": (mc + ec)[:5],
            }
        if torch.cuda.is_available():
            state["cuda_max_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        ep = state["epochs"]
        state["epoch_seconds_mean"] = round(sum(ep) / len(ep), 3) if ep else None
        dump()

    for event, fn in (
        ("on_train_start", on_train_start),
        ("on_train_batch_end", on_train_batch_end),
        ("on_fit_epoch_end", on_fit_epoch_end),
        ("on_train_end", on_train_end),
    ):
        base.default_callbacks.setdefault(event, []).append(fn)


def cli_main(argv: list[str], probe: str | None) -> int:
    if probe:
        install_probe(Path(probe))
    from edge_lora.cli.main import main

    try:
        main.main(args=argv, prog_name="edge-lora", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def cuda_binding_check(device: int, out: Path) -> int:
    """edge-lora's CUDA runtime wrapper (the TensorRT runner's memory path) on this GPU, without TensorRT."""
    import numpy as np

    from edge_lora.errors import ToolError
    from edge_lora.runtime.tensorrt_rt import _open_cuda

    rec: dict[str, Any] = {}
    try:
        cuda = _open_cuda(device)
    except ToolError as exc:
        if "no CUDA Python binding" not in str(exc):
            raise
        out.write_text(json.dumps({"skipped": str(exc)}))
        print(exc)
        return 3
    try:
        rec["binding"] = type(cuda).__name__
        name, major, minor = cuda.properties(device)
        rec["gpu_name"], rec["compute_capability"] = name, f"{major}.{minor}"
        # the calls TensorRtRunner makes: stream, device + pinned host buffers, H2D, D2H, sync, free
        x = np.arange(1 << 16, dtype=np.float32)
        stream, _handle = cuda.stream_create()
        dev_handle, dev_ptr = cuda.malloc(x.nbytes)
        host_handle, host = cuda.host_alloc(x.nbytes)
        back = host.view(np.float32)
        cuda.h2d(dev_ptr, x, stream)
        cuda.d2h(back, dev_ptr, stream)
        cuda.stream_sync(stream)
        rec["roundtrip_equal"] = bool(np.array_equal(back, x))
        rec["bytes"] = int(x.nbytes)
        cuda.free(dev_handle)
        cuda.host_free(host_handle)
        cuda.stream_destroy(stream)
    finally:
        cuda.close()
    out.write_text(json.dumps(rec))
    print(json.dumps(rec))
    return 0 if rec.get("roundtrip_equal") else 1


# ------------------------------------------------------------------------------------------------ report
def print_report(summary: dict[str, Any]) -> None:
    print("\n" + "=" * 100)
    print(json.dumps({k: v for k, v in summary.items() if k != "steps"}, indent=1, default=str))
    print("-" * 100)
    print(f"{'step':32s} {'status':6s} {'s':>7s}  key numbers / reason")
    for s in summary["steps"]:
        info = s.get("reason") or _brief(s)
        print(f"{s['name']:32s} {s['status']:6s} {s.get('seconds', 0):7.1f}  {info}"[:400])
    ok = "PASS" if summary["ok"] else "FAIL"
    print(
        f"gpu_check: {ok}: {summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped, "
        f"{summary['wall_s']} s (mode {summary['mode']}); summary in gpu_check.json"
    )


def _brief(s: dict[str, Any]) -> str:
    keys = (
        "warning",
        "epochs",
        "amp",
        "scaler_enabled",
        "first_step_dtypes",
        "metrics",
        "frozen_tensors_verified",
        "probe_frozen_identical",
        "base_file_unchanged",
        "max_rel",
        "detections_identical",
        "problems",
        "jsonl_lines",
        "gpu",
        "torch",
        "roundtrip_equal",
        "message",
    )
    parts = [f"{k}={json.dumps(s[k], default=str)}" for k in keys if k in s]
    if "bundles" in s:
        for b in s["bundles"]:
            cand = (b.get("candidates") or [{}])[0]
            nums = {k: v for k, v in cand.items() if re.search(r"map|f1|p50|p99|speed|verdict", k, re.I)}
            parts.append(f"{b.get('target')} {b.get('chosen')} passed={b.get('passed')} {json.dumps(nums)}")
    return " ".join(parts)


# -------------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--device", default="0")
    r.add_argument("--work", default="/tmp/gpu_check")
    r.add_argument("--out", required=True)
    r.add_argument("--budget", type=float, default=290.0, help="seconds for all steps together")
    r.add_argument("--elapsed", type=float, default=0.0, help="seconds already spent by the caller")
    r.add_argument("--python", default=sys.executable)
    r.add_argument("--whl", default=str(ROOT / ".whl"))
    r.add_argument("--site", default="/tmp/site")
    r.add_argument("--install", default="1", choices=("0", "1"))
    r.add_argument("--imgsz", type=int, default=128)
    r.add_argument("--train-images", type=int, default=160)
    r.add_argument("--val-images", type=int, default=32)
    r.add_argument("--base-seconds", type=float, default=60.0, help="0: --base-epochs instead of time mode")
    r.add_argument("--base-epochs", type=int, default=50)
    r.add_argument("--lora-seconds", type=float, default=40.0, help="0: --lora-epochs instead of time mode")
    r.add_argument("--lora-epochs", type=int, default=25)
    r.add_argument("--batch", type=int, default=16)
    r.add_argument("--workers", type=int, default=4)
    r.add_argument("--runs", type=int, default=100, help="timed latency runs of the build's bench")
    cl = sub.add_parser("cli")
    cl.add_argument("--probe")
    cl.add_argument("argv", nargs=argparse.REMAINDER)
    cu = sub.add_parser("cuda")
    cu.add_argument("--device", type=int, default=0)
    cu.add_argument("--json", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd == "cli":
        argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
        return cli_main(argv, a.probe)
    if a.cmd == "cuda":
        return cuda_binding_check(a.device, a.json)
    try:
        summary = run_all(a)
    except Exception:  # a bug here must still leave a summary
        import traceback

        traceback.print_exc()
        summary = _crash_summary(a, traceback.format_exc())
    print_report(summary)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
