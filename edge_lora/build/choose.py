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


def choose_precision(
    profile: TargetProfile,
    artifacts: list[dict[str, Any]],
    validate_one: Callable[[dict[str, Any]], Validated],
    on_first: Callable[[Any], None] = lambda _report: None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(every candidate tried, the one to ship or None).

    ``validate_one(artifact)`` validates one artifact (a cached stage); ``on_first(report)`` sees the first
    ``ValidationReport``: every candidate of a target shares one reference, judged once.
    """
    from edge_lora.validate.compare import ValidationReport

    auto = profile.precision == "auto"
    candidates: list[dict[str, Any]] = []
    for artifact in validation_order(profile, artifacts):
        validated = validate_one(artifact)
        doc = validated.report_doc
        report = ValidationReport.from_dict(doc)
        if not candidates:
            on_first(report)
        candidates.append(candidate_row(artifact, validated, report, doc))
        if validated.passed and not auto:
            return candidates, candidates[-1]
    if not auto:
        return candidates, None
    passing = [c for c in candidates if c["passed"]]
    return candidates, min(passing, key=lambda c: c["model_p50_ms"]) if passing else None
