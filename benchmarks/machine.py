"""Machine details recorded next to every benchmark number (torch-free)."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_details() -> dict[str, Any]:
    """CPU, cores, memory, OS, Python and library versions."""
    import importlib.metadata as md

    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f" {f}" in flags]
    libs = {}
    for pkg in ("edge-lora", "torch", "ultralytics", "peft", "onnxruntime", "openvino", "nncf", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            libs[pkg] = md.version(pkg)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa": isa,
        "memory_gb": mem_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": libs,
    }


def markdown_details(details: dict[str, Any]) -> str:
    """The machine block of a benchmark's Markdown report."""
    libs = ", ".join(f"{k} {v}" for k, v in details["libraries"].items())
    return (
        f"Machine: {details['cpu']}, {details['cores']} cores ({' '.join(details['isa']) or 'no AVX-512'}), "
        f"{details['memory_gb']} GB RAM, {details['os']}, Python {details['python']}.  \n"
        f"Libraries: {libs}."
    )
