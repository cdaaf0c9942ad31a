"""OpenVINO runner. ``openvino`` is imported only in :meth:`OpenVinoRunner.activate`."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edge_lora.errors import InputError, ModelError, ToolError
from edge_lora.runtime.base import Runner, TensorMetadata, normalize_metadata, require_file

_PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


def resolve_openvino_xml(path: str | Path) -> Path:
    """The IR ``.xml`` for ``path``: the file itself, or the only ``.xml`` in an export directory
    (Ultralytics writes ``<name>_openvino_model/<name>.xml``)."""
    p = Path(path)
    if p.is_dir():
        xmls = sorted(p.glob("*.xml"))
        if not xmls:
            raise ModelError(f"{p} holds no OpenVINO IR (.xml)")
        if len(xmls) > 1:
            raise InputError(
                f"{p} holds several OpenVINO IRs ({[x.name for x in xmls]}); pass the .xml to use"
            )
        p = xmls[0]
    if p.suffix.lower() != ".xml":
        raise InputError(f"{p}: an OpenVINO IR is a .xml file (with its .bin) or the folder holding them")
    return require_file(p, "OpenVINO IR")


def check_openvino_ir(xml_path: Path) -> Path:
    """Check that an IR is complete without OpenVINO: the XML parses and its ``.bin`` holds every constant
    the XML points into. Returns the ``.bin`` path; raises ModelError naming the broken file."""
    bin_path = require_file(xml_path.with_suffix(".bin"), "OpenVINO weights")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise ModelError(f"{xml_path} is not a readable OpenVINO IR (truncated or corrupt?): {exc}") from exc
    if root.tag != "net":
        raise ModelError(f"{xml_path} is not an OpenVINO IR (root element <{root.tag}>, expected <net>)")
    need = 0
    for data in root.iterfind("./layers/layer[@type='Const']/data"):
        try:
            need = max(need, int(data.get("offset", 0)) + int(data.get("size", 0)))
        except ValueError as exc:
            raise ModelError(f"{xml_path}: malformed constant offset/size: {exc}") from exc
    have = bin_path.stat().st_size
    if have < need:
        raise ModelError(f"{bin_path} is truncated: {have} bytes, the IR needs at least {need}")
    return bin_path


def _read_metadata_yaml(folder: Path) -> dict:
    sidecar = folder / "metadata.yaml"
    if not sidecar.is_file():
        return {}
    try:
        import yaml
    except ImportError:  # pyyaml is a runtime dependency; without it we only lose names/imgsz
        return {}
    try:
        data = yaml.safe_load(sidecar.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelError(f"{sidecar} is not valid YAML: {exc}") from exc
    return data if isinstance(data, dict) else {}


def recorded_inference_precision(path: str | Path) -> str | None:
    """The ``INFERENCE_PRECISION_HINT`` an IR was exported and validated for (``bf16`` IRs), else None."""
    value = _read_metadata_yaml(resolve_openvino_xml(path).parent).get("inference_precision")
    return str(value) if value else None


def _port_name(port, fallback: str) -> str:
    names = port.get_names()
    if not names:
        return fallback
    try:
        return port.get_any_name()
    except RuntimeError:
        return sorted(names)[0]


class OpenVinoRunner(Runner):
    """Run an OpenVINO IR with ``openvino.Core().compile_model``.

    Args:
        path: the IR ``.xml`` (its ``.bin`` beside it) or the export folder holding one IR.
        device: OpenVINO device, e.g. ``"CPU"``, ``"GPU"``, ``"NPU"``, ``"AUTO"``.
        performance_hint: ``"LATENCY"``, ``"THROUGHPUT"`` or ``"CUMULATIVE_THROUGHPUT"``.
        inference_precision: ``INFERENCE_PRECISION_HINT`` such as ``"f32"``, ``"f16"``, ``"bf16"``; None keeps
            the device default. Note: on CPUs with AVX512-BF16/AMX the CPU plugin defaults to bf16, so pass
            ``"f32"`` when an FP32 IR must reproduce FP32 outputs. An IR exported as ``bf16`` records that in
            its ``metadata.yaml`` (``inference_precision``), which then wins over this argument: the
            artifact runs the way it was validated.
        num_streams: ``NUM_STREAMS``; None keeps what the performance hint picks.
        name: runner name for messages.

    Metadata comes from the ``metadata.yaml`` Ultralytics writes next to the IR.
    """

    prefix = "openvino"

    def __init__(
        self,
        path: str | Path,
        device: str = "CPU",
        performance_hint: str = "LATENCY",
        inference_precision: str | None = None,
        num_streams: int | None = None,
        name: str | None = None,
    ):
        xml = resolve_openvino_xml(path)
        super().__init__(xml, name)
        hint = str(performance_hint).upper()
        if hint not in _PERFORMANCE_HINTS:
            raise InputError(
                f"performance_hint must be one of {list(_PERFORMANCE_HINTS)}, got {performance_hint!r}"
            )
        if num_streams is not None and int(num_streams) < 1:
            raise InputError(f"num_streams must be >= 1, got {num_streams}")
        self.device = device
        self.performance_hint = hint
        self.num_streams = None if num_streams is None else int(num_streams)
        self.bin_path = check_openvino_ir(self.path)
        raw_meta = _read_metadata_yaml(self.path.parent)
        self.metadata = normalize_metadata(raw_meta)
        self.inference_precision = raw_meta.get("inference_precision") or inference_precision
        self._compiled = None
        self._request = None
        self._input_names: list[str] = []
        self._output_names: list[str] = []

    def compile_config(self) -> dict[str, str]:
        """The properties passed to ``compile_model``."""
        config = {"PERFORMANCE_HINT": self.performance_hint}
        if self.inference_precision:
            config["INFERENCE_PRECISION_HINT"] = str(self.inference_precision)
        if self.num_streams is not None:
            config["NUM_STREAMS"] = str(self.num_streams)
        return config

    def activate_impl(self) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ToolError("OpenVINO is not installed here: pip install openvino") from exc
        core = ov.Core()
        try:
            model = core.read_model(model=str(self.path), weights=str(self.bin_path))
        except Exception as exc:
            raise ModelError(f"{self.path}: OpenVINO cannot read this IR: {_first_line(exc)}") from exc
        try:
            self._compiled = core.compile_model(model, self.device, self.compile_config())
        except Exception as exc:
            raise ToolError(
                f"{self.name}: OpenVINO cannot compile for device {self.device!r} "
                f"(available: {core.available_devices}): {_first_line(exc)}"
            ) from exc
        self._request = self._compiled.create_infer_request()
        self._input_names = [_port_name(p, f"input{i}") for i, p in enumerate(self._compiled.inputs)]
        self._output_names = [_port_name(p, f"output{i}") for i, p in enumerate(self._compiled.outputs)]

    def deactivate_impl(self) -> None:
        self._request = None
        self._compiled = None
        self._input_names, self._output_names = [], []

    @staticmethod
    def _meta(ports, names) -> TensorMetadata:
        meta: TensorMetadata = {}
        for port, name in zip(ports, names, strict=True):
            shape = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
            meta[name] = (np.dtype(port.get_element_type().to_dtype()), shape)
        return meta

    def input_metadata_impl(self) -> TensorMetadata:
        return self._meta(self._compiled.inputs, self._input_names)

    def output_metadata_impl(self) -> TensorMetadata:
        return self._meta(self._compiled.outputs, self._output_names)

    def infer_impl(self, feed: Mapping[str, np.ndarray], copy_outputs: bool) -> dict[str, np.ndarray]:
        inputs = {i: feed[name] for i, name in enumerate(self._input_names)}
        # share_inputs: OpenVINO reads the caller's (contiguous) arrays in place instead of copying them.
        results = self._request.infer(inputs, share_inputs=True, share_outputs=not copy_outputs)
        return {name: results[i] for i, name in enumerate(self._output_names)}

    @property
    def compiled_model(self):
        """The ``openvino.CompiledModel`` (None when inactive)."""
        return self._compiled


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
