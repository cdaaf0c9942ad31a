"""Describe the machine a measurement ran on (torch-free: runs on a Jetson or a line PC)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def describe_device() -> dict[str, Any]:
    """CPU model, cores, ISA extensions, memory, OS; on a Jetson its model, L4T release and power mode."""
    cpu, flags = platform.processor() or "unknown", ""
    info = _read("/proc/cpuinfo") or ""
    for line in info.splitlines():
        if line.startswith(("model name", "Model")) and cpu in ("unknown", "", "x86_64", "aarch64"):
            cpu = line.split(":", 1)[1].strip()
        if line.startswith(("flags", "Features")) and not flags:
            flags = line
    isa = [
        f
        for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "asimddp")
        if f" {f}" in flags
    ]
    mem = _read("/proc/meminfo") or ""
    mem_gb = next(
        (round(int(ln.split()[1]) / 1024**2, 1) for ln in mem.splitlines() if ln.startswith("MemTotal")), None
    )
    device: dict[str, Any] = {
        "cpu": cpu,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "isa": isa,
        "memory_gb": mem_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    jetson = _read("/proc/device-tree/model")
    if jetson:
        device["board"] = jetson
        device["l4t"] = _read("/etc/nv_tegra_release")
        mode = _read("/etc/nvpmodel.conf") and _read("/var/lib/nvpmodel/status")
        if mode:
            device["power_mode"] = mode
    return device


def is_cuda_host() -> bool:
    """True when an NVIDIA GPU is visible (driver present), without importing CUDA libraries."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvhost-ctrl").exists()


def latency_is_proxy(family: str, backend: str, artifact_backend: str) -> tuple[bool, str]:
    """Whether latency measured here stands for the target device, and why not when it does not."""
    if backend != artifact_backend:
        return True, f"the {backend} artifact is measured through {artifact_backend} on this host"
    arch = platform.machine()
    if family in ("jetson", "gpu") and not is_cuda_host():
        return True, "no NVIDIA GPU on this host"
    if family == "jetson" and not Path("/proc/device-tree/model").exists():
        return True, "this host is not a Jetson"
    if family == "rpi" and arch not in ("aarch64", "arm64"):
        return True, f"this host is {arch}, the target is an ARM64 board"
    return False, ""
