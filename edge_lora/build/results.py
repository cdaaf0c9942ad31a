"""What a build returns: one :class:`BundleResult` per (adapter, target), with its stages."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageRecord:
    """One stage's outcome, for the progress display and the report."""

    name: str
    seconds: float
    cached: bool
    verdict: str = "ok"


@dataclass
class BundleResult:
    """The bundle of one (adapter, target)."""

    adapter: str
    target: str
    bundle: Path
    passed: bool
    chosen: str | None  # precision shipped
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every precision tried, with its numbers
    stages: list[StageRecord] = field(default_factory=list)
    target_message: str | None = None
    notes: list[str] = field(default_factory=list)  # choices the build made for the user (e.g. imgsz)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        d = asdict(self)
        d["bundle"] = str(self.bundle)
        return d


@dataclass
class BuildResult:
    """All bundles of a build; ``return_code`` is 1 when any bundle failed its gates."""

    bundles: list[BundleResult]

    @property
    def passed(self) -> bool:
        """True when every bundle passed."""
        return all(b.passed for b in self.bundles)

    @property
    def return_code(self) -> int:
        """0 pass, 1 a gate failed."""
        return 0 if self.passed else 1
