"""The device distribution (issue 13, part 1): ``edge-lora-runtime`` installs without torch and runs a bundle.

The wheel is built from this checkout the way ``make device-wheel`` builds it (pip, hatchling from the package
registry), checked against the device line of ``.importlinter`` and the import graph, then installed into a
fresh virtual environment, from which its own ``edge-lora`` verifies, runs, benchmarks and validates (against
the bundle's unmerged ONNX reference) the committed bundle fixture.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
from conftest import REPO
from test_bundle_compat import EXPECTED, FIXTURE, _assert_same_frames

tomllib = pytest.importorskip("tomllib")  # 3.11+; the suite runs on the project's .venv

RUNTIME = REPO / "packaging" / "runtime"
FORBIDDEN = {"torch", "torchvision", "ultralytics", "peft", "nncf"}
#: Host-side files the device wheel must not ship.
HOST_ONLY = (
    "edge_lora/train/",
    "edge_lora/export/",
    "edge_lora/build/",
    "edge_lora/merge.py",
    "edge_lora/models.py",
    "edge_lora/report.py",
    "edge_lora/info.py",
    "edge_lora/data/synth.py",
    "edge_lora/validate/reference.py",
    "edge_lora/cli/model_cmds.py",
)
#: Imports of modules the wheel does not ship, each reached only where edge_lora/cli/main.py makes a missing
#: host module a one-line "needs pip install edge-lora" (host commands, validate --reference MODEL.pt).
HOST_IMPORTS_ALLOWED = {
    ("edge_lora.cli.main", "edge_lora.cli.model_cmds"),  # only when host_installed()
    ("edge_lora.cli.device_cmds", "edge_lora.validate.reference"),  # validate --reference base.pt
    ("edge_lora.cli.export_cmds", "edge_lora.export"),  # calib / export bodies
    ("edge_lora.cli.export_cmds", "edge_lora.build"),  # build without --on-device
}
#: Distribution name -> import name of each runtime dependency (a new dependency is added here too).
IMPORT_NAMES = {
    "numpy": "numpy",
    "opencv-python-headless": "cv2",
    "onnxruntime": "onnxruntime",
    "pyyaml": "yaml",
    "click": "click",
    "rich": "rich",
    "pydantic": "pydantic",
    "packaging": "packaging",
    "faster-coco-eval": "faster_coco_eval",
    "paho-mqtt": "paho",
    "prometheus-client": "prometheus_client",
}
#: Imported inside a function only, behind an ImportError guard or on a backend the extras provide.
OPTIONAL_IMPORTS = {
    "openvino": "extra [openvino]",
    "tensorrt": "JetPack (or pip install tensorrt)",
    "cuda": "extra [tensorrt] (cuda-python)",
    "pycuda": "the TensorRT runner's fallback to cuda-python",
    "psutil": "peak memory where the resource module is missing (Windows)",
    "scipy": "parity's tie-aware matcher, reached from the host side only",
}
_OFFLINE = re.compile(
    r"Could not fetch|connection|Network is unreachable|Name or service not known|timed out", re.I
)


def _pip(*args: str, python: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    target = ["--python", str(python)] if python else []
    return subprocess.run(
        [sys.executable, "-m", "pip", *target, *args], capture_output=True, text=True, timeout=timeout
    )


def _skip_if_registry_unreachable(proc: subprocess.CompletedProcess, what: str) -> None:
    """A failed pip step fails the test, unless the package registry cannot be reached at all."""
    if proc.returncode == 0:
        return
    with tempfile.TemporaryDirectory() as tmp:
        probe = _pip("download", "--no-deps", "--no-cache-dir", "-q", "-d", tmp, "hatchling")
    if probe.returncode != 0 and _OFFLINE.search(probe.stderr + probe.stdout):
        pytest.skip(f"{what}: the package registry is unreachable ({probe.stderr.strip()[-200:]})")
    pytest.fail(f"{what} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def _toml(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def _req_name(spec: str) -> str:
    return re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].strip().lower().replace("_", "-")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The device wheel, built from this checkout as ``make device-wheel`` builds it."""
    out = tmp_path_factory.mktemp("wheel")
    proc = _pip("wheel", "--no-deps", "-q", "-w", str(out), str(RUNTIME))
    _skip_if_registry_unreachable(proc, "building the edge-lora-runtime wheel")
    (whl,) = out.glob("edge_lora_runtime-*-py3-none-any.whl")
    return whl


def _shipped_modules(names: set[str]) -> set[str]:
    mods = set()
    for n in names:
        if n.startswith("edge_lora/") and n.endswith(".py"):
            mod = n[:-3].replace("/", ".")
            mods.add(mod.removesuffix(".__init__"))
    return mods


def _device_line() -> list[str]:
    config = configparser.ConfigParser()
    config.read(REPO / ".importlinter")
    return config.get("importlinter:contract:device-no-torch", "source_modules").split()


def test_wheel_ships_the_device_side_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        contents = {n: zf.read(n) for n in names if n.startswith("edge_lora/")}
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    shipped = _shipped_modules(names)
    # Every module of the device line (and everything under a device package) ships.
    for module in _device_line():
        path = REPO / Path(*module.split("."))
        expected = (
            {module}
            if path.with_suffix(".py").is_file()
            else _shipped_modules({str(p.relative_to(REPO)) for p in path.rglob("*.py")})
        )
        assert expected <= shipped, f"{module}: {sorted(expected - shipped)} not in {wheel.name}"
    assert not [n for n in names if n.startswith(HOST_ONLY)], "host-side files in the device wheel"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    for kind in ("targets", "calib"):
        for f in (REPO / kind).glob("*.yaml"):
            assert f"edge_lora/{kind}/{f.name}" in names
    # Built from this checkout: byte-identical sources, the same version as the full distribution.
    for name, data in contents.items():
        src = REPO / name.replace("edge_lora/targets/", "targets/").replace("edge_lora/calib/", "calib/")
        assert src.read_bytes() == data, f"{name} differs from {src}"
    # The full distribution ships every package the runtime one does (they are alternatives: README "Install").
    full_packages = set(_toml(REPO / "pyproject.toml")["tool"]["setuptools"]["packages"])
    packages = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.startswith("edge_lora/")}
    assert packages <= full_packages, sorted(packages - full_packages)
    version = _toml(REPO / "pyproject.toml")["project"]["version"]
    assert f"\nVersion: {version}\n" in metadata and wheel.name.startswith(f"edge_lora_runtime-{version}-")
    assert "edge-lora = edge_lora.cli.main:main" in entry_points
    requires = {
        _req_name(ln.split(":", 1)[1]) for ln in metadata.splitlines() if ln.startswith("Requires-Dist:")
    }
    assert not requires & FORBIDDEN and "opencv-python" not in requires and "tensorrt" not in requires


def test_shipped_modules_import_only_what_ships(wheel: Path) -> None:
    """Every import statement (lazy ones too) of a shipped module names a shipped module, a dependency of the
    wheel, the standard library, or one of the documented optional/host cases."""
    grimp = pytest.importorskip("grimp")
    with zipfile.ZipFile(wheel) as zf:
        shipped = _shipped_modules(set(zf.namelist()))
    graph = grimp.build_graph("edge_lora", include_external_packages=True)
    deps = set(IMPORT_NAMES.values())
    stdlib = set(sys.stdlib_module_names)
    bad = []
    # targets/ and calib/ ship as edge_lora.targets / edge_lora.calib: data with an empty __init__.py.
    assert {m for m in shipped if m not in graph.modules} == {"edge_lora.targets", "edge_lora.calib"}
    for module in sorted(shipped & graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported.startswith("edge_lora"):
                ok = imported in shipped or any(
                    module == m and (imported == h or imported.startswith(h + "."))
                    for m, h in HOST_IMPORTS_ALLOWED
                )
            else:
                top = imported.split(".")[0]
                ok = top in deps or top in stdlib or top in OPTIONAL_IMPORTS
            if not ok:
                bad.append(f"{module} -> {imported}")
    assert not bad, "the device wheel would miss: " + ", ".join(bad)


def test_runtime_dependencies_are_the_full_distributions() -> None:
    """Same ranges as the host's pyproject.toml (headless OpenCV for opencv-python); no misleading extras."""
    full = _toml(REPO / "pyproject.toml")["project"]
    runtime = _toml(RUNTIME / "pyproject.toml")["project"]
    full_specs = {_req_name(s): s for s in full["dependencies"]}
    for spec in runtime["dependencies"]:
        name = _req_name(spec)
        assert name in IMPORT_NAMES, f"{name}: add its import name to IMPORT_NAMES"
        host = (
            full_specs["opencv-python"].replace("opencv-python", name)
            if name == "opencv-python-headless"
            else full_specs[name]
        )
        assert spec.split("#")[0].strip() == host.split("#")[0].strip(), f"{spec!r} vs the host's {host!r}"
    assert {_req_name(s) for s in runtime["optional-dependencies"]["openvino"]} == {"openvino"}
    assert runtime["optional-dependencies"]["openvino"] == [full_specs["openvino"]]
    assert {_req_name(s) for s in runtime["optional-dependencies"]["tensorrt"]} == {"cuda-python"}
    # The old extras only added packages to the torch-heavy base: pip install edge-lora[runtime] installed torch.
    assert not {"runtime", "runtime-openvino"} & set(full.get("optional-dependencies", {}))
    jetson = {
        _req_name(ln)
        for ln in (RUNTIME / "requirements-jetson.txt").read_text().splitlines()
        if ln.split("#")[0].strip()
    }
    expected = {_req_name(s) for s in runtime["dependencies"]} - {"opencv-python-headless"} | {"cuda-python"}
    assert jetson == expected


@pytest.mark.slow
def test_device_venv_has_no_torch_and_runs_a_bundle(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # The dev venv's pip installs into the new environment (pip --python): what `pip install WHEEL` does there.
    _skip_if_registry_unreachable(_pip("install", "-q", str(wheel), python=python), "installing the wheel")
    listed = _pip("list", "--format", "json", python=python)
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert "edge-lora-runtime" in installed and "edge-lora" not in installed
    assert not installed & FORBIDDEN, sorted(installed & FORBIDDEN)
    assert [p for p in installed if p.startswith("opencv")] == ["opencv-python-headless"]
    assert _pip("check", python=python).returncode == 0

    cli = venv / "bin" / "edge-lora"

    def run(*args: object, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(cli), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        assert proc.returncode in ok, (
            f"edge-lora {args[0]}: rc {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
        return proc

    (src,) = [p for p in FIXTURE.iterdir() if (p / "manifest.json").is_file()]
    bundle = Path(shutil.copytree(src, tmp_path / src.name))
    assert "may run" in run("verify", bundle).stdout
    out = tmp_path / "run.jsonl"
    run("run", bundle, "--source", FIXTURE / "frames", "--out", out, "--conf", EXPECTED["conf"])
    _assert_same_frames([json.loads(line) for line in out.read_text().splitlines()])
    run(
        "bench",
        bundle / "model" / "model.onnx",
        "--runs",
        "20",
        "--warmup",
        "2",
        "--json",
        tmp_path / "b.json",
    )
    assert json.loads((tmp_path / "b.json").read_text())["per_batch"]

    # validate against the bundle's own unmerged ONNX reference, + bench: build --on-device, labelled frames.
    from edge_lora.data.synth import generate_demo_dataset  # host side, only to write the labelled images

    data = generate_demo_dataset(tmp_path / "data", n_train=1, n_val=4, imgsz=64, seed=0)
    # A 64 px toy INT8 model re-timed on a busy 2-core host may miss the speedup gate: exit 1 is a verdict.
    run(
        "build", "--on-device", bundle, "--data", data.line_b_yaml, "--runs", "10", "--warmup", "1", ok=(0, 1)
    )
    report = json.loads((bundle.with_name(bundle.name + ".on-device") / "validation.json").read_text())
    assert report["reference"]["name"].startswith("onnxruntime:unmerged")
    assert report["images"] == 4 and report["agreement"]["n_images"] == 4
    assert (
        0 <= report["candidate"]["accuracy"]["map50_95"] <= 1
        and report["reference"]["accuracy"]["map50_95"] >= 0
    )
    assert json.loads((bundle.with_name(bundle.name + ".on-device") / "bench.json").read_text())["per_batch"]

    # Host commands: one line naming the full distribution, exit 2 (no traceback about a missing module).
    for args in (("train", "--base", "base.pt"), ("build", "--base", "b.pt"), ("export", "--help")):
        proc = run(*args, ok=(2,))
        assert "pip install edge-lora" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (
            proc.stderr
        )
    proc = run(
        "validate",
        "--candidate",
        bundle / "model" / "model.onnx",
        "--reference",
        "base.pt",
        "--data",
        data.line_b_yaml,
        "--target",
        "cpu-onnxruntime",
        ok=(2,),
    )
    assert "pip install edge-lora" in proc.stderr and "Traceback" not in proc.stderr
    assert "train" not in run("--help").stdout.split("Commands:")[1].split("This is edge-lora-runtime")[0]
    assert "cpu-onnxruntime" in run("targets").stdout

    # Both distributions in one environment share edge_lora/: simulate pip's layout (an edge_lora dist-info
    # beside edge_lora-runtime's) and the CLI says so.
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "edge_lora-0.1.0.dist-info").mkdir()
    assert "both installed" in run("targets").stderr
