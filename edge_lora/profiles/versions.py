"""Version ranges: does a toolchain version (TensorRT's ``"10.3.0.30"``) lie in a profile's ``">=10.0,<11"``?

Comparison is :mod:`packaging`'s (PEP 440). The range language a profile may use stays the small subset it
always was: comma-separated clauses of ``==``, ``!=``, ``>=``, ``<=``, ``>`` or ``<`` and a numeric
version. PEP 440's ``~=``, wildcards (``==10.*``) and ``===`` are refused, so a profile means the same to
every edge-lora release that reads it. Versions are reduced to their numeric release part before
comparing: TensorRT and JetPack builds carry suffixes (``10.3.0.post1``, ``8.6.2-1+cuda12``) that say
nothing about the API a profile was written for.
"""

from __future__ import annotations

import re

from packaging.specifiers import SpecifierSet
from packaging.version import Version

__all__ = ["parse_range", "version_satisfies"]

_CLAUSE_RE = re.compile(r"^\s*(==|!=|>=|<=|>|<)\s*(\d+(?:\.\d+)*)\s*$")
_NUMERIC_RE = re.compile(r"^\s*(\d+(?:\.\d+)*)")


def _release(numeric: str) -> str:
    # int() also reads leading zeros and non-ASCII digits the regular expressions accept as \d.
    return ".".join(str(int(part)) for part in numeric.split("."))


def parse_range(spec: str) -> SpecifierSet:
    """The :class:`~packaging.specifiers.SpecifierSet` of a profile's range; ValueError if it is not one."""
    clauses = []
    for raw in spec.split(","):
        m = _CLAUSE_RE.match(raw)
        if not m:
            raise ValueError(
                f"bad version range {spec!r}: each comma-separated clause must be an operator "
                f"(==, !=, >=, <=, >, <) and a numeric version, e.g. '>=10.0,<11'"
            )
        clauses.append(m.group(1) + _release(m.group(2)))
    return SpecifierSet(",".join(clauses))


def version_satisfies(version: str, spec: str) -> bool:
    """True if ``version`` (e.g. TensorRT's ``"10.3.0.30"``) lies in ``spec`` (e.g. ``">=10.0,<11"``).

    Versions are compared numerically with missing parts read as zero (``10.3 == 10.3.0``); local or
    pre-release suffixes after the numeric part (``"10.3.0.post1"``) are ignored.
    """
    m = _NUMERIC_RE.match(version)
    if not m:
        raise ValueError(f"not a numeric version: {version!r}")
    return parse_range(spec).contains(Version(_release(m.group(1))), prereleases=True)
