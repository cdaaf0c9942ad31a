"""Target profiles and calibration recipes: schema, loader, family aliases.

A *target profile* (``targets/*.yaml``) says what to build for one kind of device (backend, precision and
the precisions to fall back to, input size, quantization and backend settings) and the *gates* the
exported model must pass on that device against the unmerged LoRA model. A *calibration recipe*
(``calib/*.yaml``) says which images calibrate INT8 quantization.

Both schemas are strict on purpose: an unknown key, a typo or a wrong type is an error, never silently
ignored, because a profile that quietly drops ``per_chanel: false`` builds a different model than the
one its author reviewed. Every problem raises :class:`~edge_lora.errors.ProfileError` with one line that
names the file and the dotted field, e.g. ``targets/foo.yaml: field 'gates.max_map_drop': ...``.

Torch-free on purpose: the device side (a Jetson, a line PC) loads profiles to run and validate bundles.

One module per job; import from here, which re-exports the public names:

- :mod:`~edge_lora.profiles.versions`: version ranges (``tensorrt.version``), on :mod:`packaging`
- :mod:`~edge_lora.profiles.sections`: the settings sections (quantization, backends, hardware, gates, bench)
- :mod:`~edge_lora.profiles.schema`: :class:`TargetProfile`, :class:`CalibRecipe` and the vocabulary
- :mod:`~edge_lora.profiles.backend_checks`: the shipped backends' own checks (``BackendSpec.profile_checks``)
- :mod:`~edge_lora.profiles.loader`: shipped names and paths, YAML, ``extends``, :func:`load_profile`
- :mod:`~edge_lora.profiles.device`: family aliases and device detection, :func:`resolve_target`
- :mod:`~edge_lora.profiles.docs`: the ``targets`` table, ``--set`` parsing, the README field reference

Pydantic errors become one line through :mod:`edge_lora.schema_errors`, shared with bundle manifests.
"""

from __future__ import annotations

from edge_lora.profiles.device import device_model_path, read_device_model, resolve_target
from edge_lora.profiles.docs import (
    fields_reference_markdown,
    parse_override,
    profiles_table_rows,
    schema_fields,
)

# Private helpers kept importable under their old names (`x as x` marks a re-export, not in __all__).
from edge_lora.profiles.loader import _check_calibration as _check_calibration
from edge_lora.profiles.loader import _deep_merge as _deep_merge
from edge_lora.profiles.loader import list_profiles, list_recipes, load_profile, load_recipe
from edge_lora.profiles.schema import (
    BACKENDS,
    FAMILIES,
    FAMILY_DEFAULTS,
    SCHEMA_VERSION,
    CalibRecipe,
    TargetProfile,
)
from edge_lora.profiles.schema import _validate as _validate
from edge_lora.profiles.sections import (
    BenchSettings,
    Gates,
    HardwareInfo,
    OnnxRuntimeSettings,
    OpenVinoSettings,
    QuantizationSettings,
    TensorRTSettings,
)
from edge_lora.profiles.versions import version_satisfies

__all__ = [
    "BACKENDS",
    "FAMILIES",
    "FAMILY_DEFAULTS",
    "SCHEMA_VERSION",
    "BenchSettings",
    "CalibRecipe",
    "Gates",
    "HardwareInfo",
    "OnnxRuntimeSettings",
    "OpenVinoSettings",
    "QuantizationSettings",
    "TargetProfile",
    "TensorRTSettings",
    "device_model_path",
    "fields_reference_markdown",
    "list_profiles",
    "list_recipes",
    "load_profile",
    "load_recipe",
    "parse_override",
    "profiles_table_rows",
    "read_device_model",
    "resolve_target",
    "schema_fields",
    "version_satisfies",
]
