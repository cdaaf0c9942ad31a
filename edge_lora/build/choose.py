"""The precision choice: validate candidates in the profile's order and pick the one to ship.

A fixed precision chain (``int8`` then its ``fallbacks``) ships the first that passes its gates and
validates no further; ``precision: auto`` validates every built precision and ships the fastest passing
(model p50 latency, measured the same way for each).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge_lora.build.stages import Validated

if TYPE_CHECKING:
    from edge_lora.profiles import TargetProfile

#: What ``auto`` validates first: the precisions most likely to be fastest.
AUTO_ORDER = ("int8", "fp16", "bf16", "fp32")

#: A candidate's numbers that the bundle's manifest summarises.
SUMMARY_KEYS = (
    "precision",
    "map50_95",
    "ref_map50_95",
    "agreement_f1",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "speedup",
)


def validation_order(profile: TargetProfile, artifacts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The exported artifacts in the order they are validated (unknown precisions last)."""
    order = list(AUTO_ORDER) if profile.precision == "auto" else profile.precision_chain()
    return sorted(artifacts, key=lambda a: order.index(a["precision"]) if a["precision"] in order else 9)


def candidate_row(
    artifact: dict[str, Any], validated: Validated, report: Any, doc: dict[str, Any]
) -> dict[str, Any]:
    """One tried precision for the report, the bundle and ``BundleResult.candidates``: its numbers from the
    ``report`` (a ``ValidationReport``), and ``doc``, the validation file's own form, kept under ``report``
    for the plots and the manifest (``BundleResult.candidates`` drops it)."""
    return {
        **artifact,
        "passed": validated.passed,
        "validation": str(validated.json),
        "report_md": str(validated.md),
        "map50_95": report.candidate.accuracy.map50_95,
        "ref_map50_95": report.reference.accuracy.map50_95,
        "agreement_f1": report.agreement.f1,
        "model_p50_ms": report.candidate.latency["model"].p50_ms,
        "e2e_p50_ms": report.candidate.latency["e2e"].p50_ms,
        "e2e_p99_ms": report.candidate.latency["e2e"].p99_ms,
        "ref_e2e_p50_ms": report.reference.latency["e2e"].p50_ms,
        "speedup": report.speedup,
        "report": doc,
    }


def accuracy_aware_variant(profile: TargetProfile) -> TargetProfile | None:
    """The profile with ``quantization.accuracy_aware`` on, for a retry after plain INT8 failed its gate;
    None when the profile already searched, builds no QDQ INT8, or its recipe has no labelled images."""
    from edge_lora import backends

    q = profile.quantization
    if q is None or q.accuracy_aware or not backends.get(profile.backend).qdq_int8:
        return None
    recipe = profile.load_calibration()
    if recipe is None or not getattr(recipe, "validation_images", 0):
        return None
    return profile.with_overrides({"quantization.accuracy_aware": True}, origin="build: INT8 failed its gate")


def choose_precision(
    profile: TargetProfile,
    artifacts: list[dict[str, Any]],
    validate_one: Callable[[dict[str, Any]], Validated],
    on_first: Callable[[Any], None] = lambda _report: None,
    retry_int8: Callable[[], dict[str, Any] | None] = lambda: None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(every candidate tried, the one to ship or None).

    ``validate_one(artifact)`` validates one artifact (a cached stage); ``on_first(report)`` sees the first
    ``ValidationReport``: every candidate of a target shares one reference, judged once. When plain INT8
    fails its gates, ``retry_int8()`` may return another INT8 artifact (the accuracy-aware one, marked
    ``variant``), validated next, before any slower precision; both rows stay in the candidates.
    """
    from edge_lora.validate.compare import ValidationReport

    auto = profile.precision == "auto"
    candidates: list[dict[str, Any]] = []
    queue = validation_order(profile, artifacts)
    while queue:
        artifact = queue.pop(0)
        validated = validate_one(artifact)
        doc = validated.report_doc
        report = ValidationReport.from_dict(doc)
        if not candidates:
            on_first(report)
        candidates.append(candidate_row(artifact, validated, report, doc))
        if validated.passed and not auto:
            return candidates, candidates[-1]
        if artifact["precision"] == "int8" and not validated.passed and not artifact.get("variant"):
            retry = retry_int8()
            if retry is not None:
                queue.insert(0, retry)
    if not auto:
        return candidates, None
    passing = [c for c in candidates if c["passed"]]
    return candidates, min(passing, key=lambda c: c["model_p50_ms"]) if passing else None
