"""Write deploy bundles atomically, mark failed ones, archive them, and verify them.

A bundle is either complete or absent: :func:`write_bundle` builds it in a temp folder beside the
destination, hashes the staged copies, writes ``manifest.json`` last, checks the result with
:func:`verify_bundle` and only then renames the folder into place. A build that fails after its inputs exist
(a gate failed, an exporter broke) writes a bundle too, through :func:`write_failed_bundle`, with
``status: "failed"`` so the report travels with it and nothing that failed ever looks runnable.

:func:`verify_bundle` is what the device runs before anything else: the manifest's schema, every listed file
present with its sha256, no file the manifest does not list (except the outputs the on-device steps build,
such as a TensorRT engine), the artifacts consistent with the file list, and the status.

Torch-free: the device side verifies bundles.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_lora.bundle.manifest import (
    MANIFEST_NAME,
    BundleError,
    BundleFailed,
    Manifest,
    build_manifest,
    check_relative_path,
    parse_manifest,
    read_manifest,
)
from edge_lora.errors import InputError
from edge_lora.fileio import atomic_output_dir, atomic_write_text, check_output, sha256_file

__all__ = [
    "Check",
    "VerifyResult",
    "archive_path_for",
    "load_verified",
    "mark_bundle_failed",
    "verify_bundle",
    "write_archive",
    "write_bundle",
    "write_failed_bundle",
]

FileSource = str | os.PathLike | bytes


# --------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------


def archive_path_for(bundle_dir: str | Path) -> Path:
    """``dist/line_b-cpu-onnxruntime`` -> ``dist/line_b-cpu-onnxruntime.tar.gz``."""
    p = Path(bundle_dir)
    return p.with_name(p.name + ".tar.gz")


def _stage(tmp: Path, files: Mapping[str, FileSource]) -> list[str]:
    """Copy ``files`` into ``tmp``; a source folder is copied with everything under it. Returns the
    relative paths of every staged file."""
    staged: list[str] = []
    for rel, source in sorted(files.items()):
        problem = check_relative_path(rel)
        if problem:
            raise InputError(f"bundle file {problem}")
        dest = tmp / rel
        if isinstance(source, (bytes, bytearray, memoryview)):
            items = [(rel, dest, bytes(source))]
        else:
            src = Path(source)
            if src.is_dir():
                items = [
                    (f"{rel}/{f.relative_to(src).as_posix()}", dest / f.relative_to(src), f)
                    for f in sorted(src.rglob("*"))
                    if f.is_file()
                ]
                if not items:
                    raise InputError(f"bundle file {rel}: source folder {src} holds no files")
            elif src.is_file():
                items = [(rel, dest, src)]
            else:
                raise InputError(f"bundle file {rel}: source {src} does not exist")
        for item_rel, item_dest, content in items:
            try:
                item_dest.parent.mkdir(parents=True, exist_ok=True)
                clash = item_dest.exists()
            except (FileExistsError, NotADirectoryError):
                clash = True
            if clash or item_rel == MANIFEST_NAME:
                raise InputError(
                    f"bundle file {item_rel} is given twice, clashes with another path, or is reserved"
                )
            if isinstance(content, bytes):
                item_dest.write_bytes(content)
            else:
                shutil.copyfile(content, item_dest)
            staged.append(item_rel)
    return staged


def _fill_artifacts(artifacts: Any, hashes: Mapping[str, str], tmp: Path) -> Any:
    """Fill each artifact's sha256 and bytes from the staged file; refuse a stated hash that differs."""
    if not isinstance(artifacts, list):
        return artifacts
    out = []
    for art in artifacts:
        if not isinstance(art, Mapping):
            out.append(art)
            continue
        art = dict(art)
        path = art.get("path")
        if isinstance(path, str) and path not in hashes:
            raise InputError(
                f"artifact {path} is not one of the bundle's files ({', '.join(sorted(hashes))})"
            )
        if isinstance(path, str):
            stated = art.get("sha256")
            if stated is not None and stated != hashes[path]:
                raise InputError(
                    f"artifact {path}: stated sha256 {stated[:12]}... differs from the file copied"
                )
            art["sha256"] = hashes[path]
            art.setdefault("bytes", (tmp / path).stat().st_size)
        out.append(art)
    return out


def write_bundle(
    out_dir: str | Path,
    files: Mapping[str, FileSource],
    manifest_fields: Mapping[str, Any],
    *,
    overwrite: bool = False,
    archive: bool = False,
) -> Path:
    """Write a bundle to ``out_dir`` atomically and return its path.

    Args:
        out_dir: the bundle folder to create, e.g. ``dist/line_b-cpu-onnxruntime``.
        files: ``{relative path in the bundle: source}``; a source is a file, a folder (copied whole under
            that path) or bytes. ``manifest.json`` is written by this function and cannot be given.
        manifest_fields: keyword arguments of :func:`~edge_lora.bundle.manifest.build_manifest` without
            ``files`` (computed here). Each artifact's ``sha256`` and ``bytes`` may be left out: they are
            taken from the copied file.
        overwrite: replace an existing bundle (and archive).
        archive: also write ``<out_dir>.tar.gz`` (atomically, after the folder is in place).

    Raises:
        OutputExistsError: ``out_dir`` (or the archive) exists and ``overwrite`` is False.
        InputError: a file path or source is wrong. BundleError: a manifest field is wrong.
    """
    out_dir = Path(out_dir)
    if "files" in manifest_fields:
        raise InputError("manifest_fields must not contain 'files': write_bundle hashes the copied files")
    check_output(out_dir, overwrite)
    if archive:
        check_output(archive_path_for(out_dir), overwrite)
    fields = dict(manifest_fields)
    fields.setdefault("name", out_dir.name)
    with atomic_output_dir(out_dir, overwrite) as tmp:
        staged = _stage(tmp, files)
        hashes = {rel: sha256_file(tmp / rel) for rel in sorted(staged)}
        fields["artifacts"] = _fill_artifacts(fields.get("artifacts", []), hashes, tmp)
        manifest = build_manifest(**fields, files=hashes)
        atomic_write_text(tmp / MANIFEST_NAME, manifest.to_json())  # last: a manifest means "complete"
        check = verify_bundle(tmp, allow_failed=True)
        if not check:
            raise RuntimeError(f"bundle written to {tmp} does not verify: {check.problems}")  # a bug here
    if archive:
        write_archive(out_dir)
    return out_dir


def write_failed_bundle(
    out_dir: str | Path,
    files: Mapping[str, FileSource],
    manifest_fields: Mapping[str, Any],
    reason: str,
    *,
    overwrite: bool = False,
    archive: bool = False,
) -> Path:
    """Write a bundle marked ``status: "failed"`` with ``failure_reason``: the report and whatever artifacts
    exist travel together, and ``edge-lora run`` refuses it unless ``--allow-failed``."""
    if not reason or not reason.strip():
        raise InputError("a failed bundle needs a reason")
    fields = {**manifest_fields, "status": "failed", "failure_reason": reason.strip()}
    return write_bundle(out_dir, files, fields, overwrite=overwrite, archive=archive)


def mark_bundle_failed(bundle_dir: str | Path, reason: str) -> Manifest:
    """Mark an existing, intact bundle failed (e.g. when on-device validation fails); only ``manifest.json``
    changes, atomically. Returns the new manifest."""
    if not reason or not reason.strip():
        raise InputError("a failed bundle needs a reason")
    result = verify_bundle(bundle_dir, allow_failed=True)
    result.raise_for_problems()
    data = result.manifest.to_dict()
    data.update(status="failed", failure_reason=reason.strip())
    manifest = build_manifest(**data)
    atomic_write_text(Path(bundle_dir) / MANIFEST_NAME, manifest.to_json())
    return manifest


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Reproducible and owner-neutral: the archive is unpacked on another machine by another user.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def write_archive(bundle_dir: str | Path, archive_path: str | Path | None = None) -> Path:
    """Pack a bundle folder into ``<bundle>.tar.gz`` (top-level folder = the bundle's name), atomically."""
    bundle_dir = Path(bundle_dir)
    dest = Path(archive_path) if archive_path is not None else archive_path_for(bundle_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            tar.add(bundle_dir, arcname=bundle_dir.name, recursive=False, filter=_tar_filter)
            for path in sorted(bundle_dir.rglob("*")):
                tar.add(
                    path,
                    arcname=f"{bundle_dir.name}/{path.relative_to(bundle_dir).as_posix()}",
                    recursive=False,
                    filter=_tar_filter,
                )
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dest


# --------------------------------------------------------------------------------------------------------
# Verifying
# --------------------------------------------------------------------------------------------------------


@dataclass
class Check:
    """One verification check: ``ok`` True (pass), False (fail) or None (a warning, not a failure)."""

    name: str
    ok: bool | None
    detail: str

    @property
    def status(self) -> str:
        return {True: "PASS", False: "FAIL", None: "WARN"}[self.ok]


@dataclass
class VerifyResult:
    """Outcome of :func:`verify_bundle`; truthy when the bundle may run.

    Attributes:
        bundle: the bundle folder.
        manifest: the parsed manifest (None when it is missing or invalid).
        checks: the checks in order, for a table.
        problems: one line per problem, each naming the file; empty when the bundle may run.
        warnings: things to know that do not stop it (a failed status allowed, an engine not built yet).
        tampered: some problem is about the files or the manifest (not just a failed status).
    """

    bundle: Path
    manifest: Manifest | None = None
    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tampered: bool = False

    @property
    def passed(self) -> bool:
        return not self.problems

    def __bool__(self) -> bool:
        return self.passed

    def raise_for_problems(self) -> None:
        """Raise :class:`BundleError` (tampered or invalid, exit 2) or :class:`BundleFailed` (marked failed,
        exit 1) with the first problem on one line; do nothing when the bundle may run."""
        if not self.problems:
            return
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        if self.tampered:
            raise BundleError(f"bundle {self.bundle} is not intact: {self.problems[0]}{more}")
        raise BundleFailed(f"bundle {self.bundle}: {self.problems[0]}{more}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle),
            "passed": self.passed,
            "tampered": self.tampered,
            "name": self.manifest.name if self.manifest else None,
            "status": self.manifest.status if self.manifest else None,
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks],
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }


def _walk_bundle(root: Path) -> tuple[list[str], list[str]]:
    """Relative POSIX paths of the regular files under ``root``, and of anything that is not a plain file
    or folder (symlinks, sockets...)."""
    files, odd = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in list(dirnames):
            if (base / name).is_symlink():
                odd.append((base / name).relative_to(root).as_posix())
                dirnames.remove(name)
        for name in filenames:
            p = base / name
            rel = p.relative_to(root).as_posix()
            (files if p.is_file() and not p.is_symlink() else odd).append(rel)
    return sorted(files), sorted(odd)


def _short(h: str) -> str:
    return h[:12] + "..."


def verify_bundle(bundle_dir: str | Path, *, allow_failed: bool = False) -> VerifyResult:
    """Check a bundle before it runs; never raises for a bad bundle, the result says what is wrong.

    Checks: the manifest parses against the schema; every file in ``files`` exists with its sha256; no file
    is unlisted (``manifest.json`` and the artifacts' declared ``device_outputs`` excepted); each artifact is
    in ``files`` with its size; the status is ``complete`` (with ``allow_failed`` a failed status is only a
    warning).
    """
    root = Path(bundle_dir)
    result = VerifyResult(bundle=root)

    def fail(check: str, problems: list[str], ok_detail: str) -> None:
        result.problems.extend(problems)
        result.tampered = result.tampered or bool(problems)
        detail = (
            problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
            if problems
            else ok_detail
        )
        result.checks.append(Check(check, not problems, detail))

    if not root.is_dir():
        fail("manifest", [f"{root} is not a folder" if root.exists() else f"{root} does not exist"], "")
        return result
    try:
        text = (root / MANIFEST_NAME).read_bytes()
        manifest = parse_manifest(text, MANIFEST_NAME)
    except FileNotFoundError:
        fail("manifest", [f"{MANIFEST_NAME} is missing (not a bundle, or its build did not finish)"], "")
        return result
    except BundleError as exc:
        fail("manifest", [str(exc)], "")
        return result
    result.manifest = manifest
    fail("manifest", [], f"schema {manifest.schema_version}, {manifest.name}, built {manifest.created}")

    on_disk, odd = _walk_bundle(root)
    on_disk_set = set(on_disk)
    problems, total = [], 0
    for rel, want in sorted(manifest.files.items()):
        path = root / rel
        if rel not in on_disk_set:
            problems.append(
                f"{rel}: listed in the manifest but missing" + (" (not a plain file)" if rel in odd else "")
            )
            continue
        got = sha256_file(path)
        total += path.stat().st_size
        if got != want:
            problems.append(
                f"{rel}: sha256 {_short(got)} does not match the manifest's {_short(want)} (modified?)"
            )
    fail("files", problems, f"{len(manifest.files)} files, {total} bytes, sha256 match")

    allowed = set(manifest.files) | {MANIFEST_NAME} | set(manifest.device_outputs)
    unlisted = [
        f"{rel}: not listed in the manifest (added after the build?)" for rel in on_disk if rel not in allowed
    ]
    unlisted += [
        f"{rel}: is a link or special file; a bundle holds plain files only"
        for rel in odd
        if rel not in manifest.files
    ]
    fail("unlisted files", unlisted, "none")

    problems, built, pending = [], [], []
    for art in manifest.artifacts:
        size = (root / art.path).stat().st_size if art.path in on_disk_set else None
        if size is not None and size != art.bytes:
            problems.append(f"{art.path}: {size} bytes, the manifest says {art.bytes}")
        for out in art.device_outputs[:1]:
            (built if out in on_disk_set else pending).append(out)
    primary = manifest.primary
    detail = (
        f"primary {primary.path} ({primary.backend}, {primary.precision})"
        if primary
        else "no primary artifact"
    )
    if built:
        detail += f"; built on device: {', '.join(built)} (not hashed)"
    fail("artifacts", problems, detail)
    if pending:
        msg = f"{', '.join(pending)} not built yet; on the device run: " + " && ".join(
            manifest.on_device_steps
        )
        result.warnings.append(msg)
        result.checks.append(Check("device build", None, msg))

    if manifest.status == "complete":
        result.checks.append(Check("status", True, "complete"))
    else:
        msg = f"marked failed: {manifest.failure_reason}"
        if allow_failed:
            result.warnings.append(msg)
            result.checks.append(Check("status", None, msg + " (allowed)"))
        else:
            result.problems.append(msg)
            result.checks.append(Check("status", False, msg))
    return result


def load_verified(bundle_dir: str | Path, *, allow_failed: bool = False) -> Manifest:
    """:func:`verify_bundle` and return the manifest, or raise the first problem on one line."""
    if not Path(bundle_dir).exists():
        read_manifest(bundle_dir)  # raises "bundle X does not exist"
    result = verify_bundle(bundle_dir, allow_failed=allow_failed)
    if not result and not result.tampered and not allow_failed:
        raise BundleError(
            f"bundle {bundle_dir} is {result.problems[0]}; pass --allow-failed to run it anyway"
        )
    result.raise_for_problems()
    assert result.manifest is not None
    return result.manifest
