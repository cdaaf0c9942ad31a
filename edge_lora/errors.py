"""User-facing errors and the exit codes they map to.

Everything a user can cause (a wrong path, a bad YAML, a tampered file) raises a subclass of
:class:`EdgeLoraError`. The CLI prints its message on one line without a traceback and exits with
its ``exit_code``; anything else is a bug and keeps its traceback.

Exit codes: 0 pass, 1 a gate failed, 2 usage or input error, 3 a tool (exporter, runtime) failed,
4 an output could not be written (no space left on the device), 5 a live source (stream, camera) was lost.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_TOOL_FAILED = 3
EXIT_NO_SPACE = 4
EXIT_SOURCE_LOST = 5


class EdgeLoraError(Exception):
    """Base class for errors caused by the user's input or environment (printed without traceback)."""

    exit_code: int = EXIT_USAGE


class InputError(EdgeLoraError):
    """A file, option or value given by the user is missing, malformed or inconsistent."""


class DataError(InputError):
    """A dataset (data YAML, images, labels) is unusable."""


class ModelError(InputError):
    """A model file is missing, is not a YOLO checkpoint, or does not fit the request."""


class AdapterError(InputError):
    """An adapter package is incomplete, tampered with, or does not fit the base model."""


class ProfileError(InputError):
    """A target profile or calibration recipe is unknown or fails schema validation."""


class ReferenceAccuracyError(InputError):
    """The unmerged reference scores far below what the adapter recorded: the build is misconfigured."""


class OutputExistsError(InputError):
    """The output path exists and ``--overwrite`` was not given."""


class ToolError(EdgeLoraError):
    """An external tool (exporter, quantizer, runtime) failed on valid input."""

    exit_code = EXIT_TOOL_FAILED


class MergeParityError(ToolError):
    """The merged model does not reproduce the unmerged model's outputs within tolerance."""


class NoSpaceError(EdgeLoraError):
    """A write failed because its filesystem is full (ENOSPC) or over quota; nothing half-written is left.

    Not an ``OSError`` on purpose: callers that clean up on ``OSError`` see it once, and the CLI maps it
    to its own exit code instead of "a gate failed".
    """

    exit_code = EXIT_NO_SPACE


class SourceLostError(EdgeLoraError):
    """A live source (network stream, GStreamer pipeline, camera) dropped and did not come back in time."""

    exit_code = EXIT_SOURCE_LOST


class GateFailed(EdgeLoraError):
    """A validation gate of the target profile failed."""

    exit_code = EXIT_GATE_FAILED
