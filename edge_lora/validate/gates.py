"""Pass/fail gates of a target profile, as truthy and serializable result objects.

Modelled on Polygraphy's comparator results (``OutputCompareResult`` / ``AccuracyResult``): a
result knows whether it passed, ``bool(result)`` says so, and it round-trips through plain JSON so
that a validation report written on the device can be re-read and re-rendered on the host.

Torch-free like the rest of :mod:`edge_lora.validate`.

Gates (keys of the profile's ``gates`` mapping; ``None`` disables a gate):

* ``max_map_drop`` (mAP points, 0..100 scale): passes when
  ``100 * (reference mAP50-95 - candidate mAP50-95) <= max_map_drop``; 0.5 allows a drop of 0.005.
* ``min_agreement_f1`` (0..1): passes when the candidate-vs-reference agreement F1 ``>=`` it.
* ``max_p99_ms`` (ms): passes when the candidate's p99 latency ``<=`` it.
* ``min_speedup`` (ratio): passes when ``reference latency / candidate latency >=`` it.

All comparisons are inclusive (a value exactly at the threshold passes) with a slack of
:data:`EPS` so that float rounding of a value that equals the threshold cannot fail it. A NaN value
always fails. A gate whose threshold is set but whose measurement is missing (``None``) *fails*: a
gate must not pass silently because nobody measured. Latency gates measured on a host proxy
instead of the target device are *skipped* (they neither pass nor fail the report).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_lora.errors import EXIT_GATE_FAILED, EXIT_OK, GateFailed, ProfileError

__all__ = [
    "EPS",
    "KNOWN_GATES",
    "TABLE_COLUMNS",
    "GateCheck",
    "GateReport",
    "evaluate_gates",
    "format_value",
]

# Absolute slack for "at the threshold": values are mAP points, F1, ms and ratios, all O(1..1000),
# where 1e-9 is far below anything measurable but above the rounding of 100 * (a - b).
EPS = 1e-9

# Gate key -> (comparator, unit, what is measured). The order is the report's row order.
KNOWN_GATES: dict[str, tuple[str, str, str]] = {
    "max_map_drop": ("<=", "mAP pts", "mAP50-95 drop, reference - candidate"),
    "min_agreement_f1": (">=", "F1", "agreement F1 of candidate vs reference"),
    "max_p99_ms": ("<=", "ms", "candidate p99 latency"),
    "min_speedup": (">=", "x", "reference / candidate latency"),
}
_LATENCY_GATES = frozenset({"max_p99_ms", "min_speedup"})

TABLE_COLUMNS = ("Gate", "Value", "Threshold", "Status", "Detail")


# Decimals shown per unit: what the measurement resolves, not what a float64 holds. 0.01 mAP points is
# 1e-4 mAP, below the evaluator's sensitivity to one box on a typical val set; agreement F1 moves by ~1e-3
# per box on a few hundred boxes; latency run-to-run noise is far above 0.01 ms; speedups are ratios of such.
_DECIMALS = {"mAP pts": 2, "F1": 3, "ms": 2, "x": 2}


def format_value(
    value: float | None, unit: str = "", *, decimals: int | None = None, sign: bool = False
) -> str:
    """A gate value for people: rounded to what is meaningful for ``unit`` (see ``_DECIMALS``).

    ``None`` (not measured) is ``"-"``, NaN ``"NaN"``; a negative zero after rounding loses its sign; units
    other than ``x`` are separated by a space (``"0.25 mAP pts"``, ``"9.10x"``). ``decimals`` overrides the
    unit's precision; ``sign`` always writes the sign (for deltas and margins).
    """
    if value is None:
        return "-"
    value = float(value)
    if math.isnan(value):
        return "NaN"
    places = _DECIMALS.get(unit) if decimals is None else decimals
    if math.isinf(value):
        text = "inf" if value > 0 else "-inf"
    elif places is None:
        text = f"{value:{'+' if sign else ''}.4g}"
    else:
        text = f"{value:{'+' if sign else ''}.{places}f}"
        if float(text) == 0:  # "-0.00" says "a drop" where there is none
            text = f"{0.0:{'+' if sign else ''}.{places}f}"
    if not unit:
        return text
    return f"{text}{unit}" if unit == "x" else f"{text} {unit}"


def _display_decimals(check: GateCheck) -> int | None:
    """The unit's decimals, or more when rounding would hide why a gate failed (a drop of 0.004 points
    against a threshold of 0.00 must not read "0.00 <= 0.00 FAIL")."""
    places = _DECIMALS.get(check.unit)
    if places is None or check.value is None or check.threshold is None or check.passed is not False:
        return places
    for extra in range(7):
        shown = round(check.value, places + extra)
        limit = round(check.threshold, places + extra)
        holds = shown <= limit if check.comparator == "<=" else shown >= limit
        if not holds:
            return places + extra
    return places + 6


@dataclass
class GateCheck:
    """The outcome of one gate.

    Attributes:
        name: the profile key, e.g. ``"max_map_drop"``.
        value: the measured value in the gate's unit (``None`` when not measured).
        threshold: the profile's threshold (``None`` when the gate is disabled).
        comparator: ``"<="`` or ``">="`` - ``value <comparator> threshold`` must hold.
        passed: ``True``/``False``; ``None`` when the gate was skipped.
        unit: unit of ``value`` and ``threshold``, for display.
        detail: a human-readable explanation (what was measured, how far from the threshold).
        skipped: the gate was not evaluated; ``reason`` says why.
        reason: why the gate was skipped.
    """

    name: str
    value: float | None
    threshold: float | None
    comparator: str
    passed: bool | None
    unit: str = ""
    detail: str = ""
    skipped: bool = False
    reason: str = ""

    def __post_init__(self) -> None:
        if self.comparator not in ("<=", ">="):
            raise ValueError(f"gate {self.name!r}: comparator must be '<=' or '>=', got {self.comparator!r}")
        if self.skipped != (self.passed is None):
            raise ValueError(f"gate {self.name!r}: passed must be None exactly when the gate is skipped")

    @property
    def status(self) -> str:
        """``"PASS"``, ``"FAIL"`` or ``"SKIP"``."""
        if self.skipped:
            return "SKIP"
        return "PASS" if self.passed else "FAIL"

    @property
    def value_text(self) -> str:
        """The measured value, rounded for display (``"-"`` when not measured)."""
        return format_value(self.value, self.unit, decimals=_display_decimals(self))

    @property
    def threshold_text(self) -> str:
        """``"<= 1.00 mAP pts"``; ``"- (disabled)"`` for a gate whose threshold is null."""
        if self.threshold is None:
            return "- (disabled)"
        return (
            f"{self.comparator} {format_value(self.threshold, self.unit, decimals=_display_decimals(self))}"
        )

    @property
    def why(self) -> str:
        """Why the gate was skipped, or what was measured and by how much it passed or failed."""
        if self.skipped:
            return f"skipped: {self.reason}" if self.reason else "skipped (no reason recorded)"
        return self.detail

    def __bool__(self) -> bool:
        """Whether this gate lets the candidate through (skipped gates do not block)."""
        return self.passed is not False

    def __str__(self) -> str:
        if self.skipped:
            return f"{self.name}: SKIP ({self.reason})"
        return f"{self.name}: {self.status} ({self.value_text} {self.threshold_text})"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateCheck:
        """Inverse of :meth:`to_dict`."""
        return cls(**dict(data))


@dataclass
class GateReport:
    """All gate checks of one validation; truthy when no gate failed.

    Skipped gates do not fail the report. A report without checks passes (the profile set no gate).
    """

    checks: list[GateCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No check failed."""
        return all(bool(c) for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failed(self) -> list[GateCheck]:
        """The checks that failed."""
        return [c for c in self.checks if c.passed is False]

    @property
    def skipped(self) -> list[GateCheck]:
        """The checks that were skipped."""
        return [c for c in self.checks if c.skipped]

    @property
    def return_code(self) -> int:
        """The CLI exit code: 0 when passed, 1 (``EXIT_GATE_FAILED``) when a gate failed."""
        return EXIT_OK if self.passed else EXIT_GATE_FAILED

    def __getitem__(self, name: str) -> GateCheck:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def __str__(self) -> str:
        head = "PASSED" if self.passed else f"FAILED ({', '.join(c.name for c in self.failed)})"
        return "\n".join([f"Gates {head}", *(f"  {c}" for c in self.checks)])

    def raise_if_failed(self) -> None:
        """Raise :class:`~edge_lora.errors.GateFailed` (exit code 1) naming the failed gates."""
        if not self.passed:
            raise GateFailed("gate(s) failed: " + "; ".join(str(c) for c in self.failed))

    def table_rows(self) -> list[tuple[str, str, str, str, str]]:
        """Rows of strings matching :data:`TABLE_COLUMNS`, ready for ``rich.table.Table.add_row``: values
        rounded for display, a skipped gate's detail saying why it was skipped."""
        return [(c.name, c.value_text, c.threshold_text, c.status, c.why) for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form; ``passed`` and ``return_code`` are included for readers of the file."""
        return {
            "passed": self.passed,
            "return_code": self.return_code,
            "checks": [c.to_dict() for c in self.checks],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateReport:
        """Inverse of :meth:`to_dict` (``passed`` is recomputed from the checks, not trusted)."""
        return cls([GateCheck.from_dict(c) for c in data["checks"]])


def _compare(value: float, comparator: str, threshold: float) -> bool:
    if math.isnan(value):
        return False
    if comparator == "<=":
        return value <= threshold + EPS
    return value >= threshold - EPS


def evaluate_gates(
    gates: Mapping[str, float | None],
    *,
    accuracy_delta_points: float | None,
    agreement_f1: float | None,
    p99_ms: float | None,
    speedup: float | None,
    latency_is_proxy: bool,
    proxy_reason: str = "",
) -> GateReport:
    """Evaluate the profile's gates against the measurements.

    Args:
        gates: the profile's ``gates`` mapping (keys in :data:`KNOWN_GATES`; ``None`` disables a gate,
            a missing key is not reported at all).
        accuracy_delta_points: candidate minus reference mAP50-95 in *points* on a 0..100 scale,
            i.e. ``100 * candidate.delta(reference)["map50_95"]``; negative means the candidate is
            worse. ``max_map_drop`` compares the drop ``-accuracy_delta_points``.
        agreement_f1: :attr:`~edge_lora.validate.metrics.AgreementResult.f1` (0..1).

    ``None`` for any measurement fails a gate that needs it (unless skipped as a proxy latency).
        p99_ms: the candidate's p99 latency in ms, ``None`` if not measured.
        speedup: reference / candidate latency (:func:`~edge_lora.validate.metrics.speedup`), ``None``
            if not measured.
        latency_is_proxy: latency was measured on a host standing in for the device; latency gates
            are then skipped because host timings say nothing about the target.
        proxy_reason: why the host is a proxy (e.g. "TensorRT profile measured with ONNX Runtime on the
            host CPU"), added to a skipped gate's reason.

    Raises:
        ProfileError: an unknown gate key or a non-numeric threshold (a typo must not silently
            disable a gate).
    """
    unknown = sorted(set(gates) - set(KNOWN_GATES))
    if unknown:
        raise ProfileError(f"unknown gate(s) {unknown}; known gates: {list(KNOWN_GATES)}")

    values: dict[str, float | None] = {
        "max_map_drop": None if accuracy_delta_points is None else -float(accuracy_delta_points),
        "min_agreement_f1": None if agreement_f1 is None else float(agreement_f1),
        "max_p99_ms": None if p99_ms is None else float(p99_ms),
        "min_speedup": None if speedup is None else float(speedup),
    }

    checks: list[GateCheck] = []
    for name, (comparator, unit, what) in KNOWN_GATES.items():
        if name not in gates:
            continue
        raw = gates[name]
        value = values[name]
        if raw is None:
            reason = f"disabled in the profile (gates.{name}: null)"
            checks.append(GateCheck(name, value, None, comparator, None, unit, what, True, reason))
            continue
        # numbers.Real also admits numpy scalars; bool is an int subclass but never a threshold.
        if isinstance(raw, bool) or not isinstance(raw, numbers.Real) or math.isnan(raw):
            raise ProfileError(f"gate {name!r}: threshold must be a number or null, got {raw!r}")
        threshold = float(raw)

        if name in _LATENCY_GATES and latency_is_proxy:
            reason = (
                "latency measured on a host proxy, not on the target device"
                + (f" ({proxy_reason})" if proxy_reason else "")
                + "; run `edge-lora build --on-device` on the device to apply it"
            )
            checks.append(GateCheck(name, value, threshold, comparator, None, unit, what, True, reason))
            continue
        if value is None:
            checks.append(GateCheck(name, None, threshold, comparator, False, unit, f"{what}: not measured"))
            continue

        passed = _compare(value, comparator, threshold)
        if name == "max_map_drop":
            detail = f"mAP50-95 {format_value(-value, unit, sign=True)} (candidate - reference)"
        else:
            margin = value - threshold if comparator == ">=" else threshold - value
            detail = f"{what}; margin {format_value(margin, unit, sign=True)}"
        checks.append(GateCheck(name, value, threshold, comparator, passed, unit, detail))
    return GateReport(checks)
