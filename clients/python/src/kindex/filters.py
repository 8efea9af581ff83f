"""Payload filters as plain dicts.

A filter is a conjunction of conditions on top-level payload fields. Two
spellings are accepted, and both become the node's grammar (``docs/python.md``):

Full form, exactly what the HTTP API takes::

    {"must": [{"field": "lang", "match": "en"},
              {"field": "year", "range": {"gte": 2000, "lt": 2010}}]}

Short form, one key per field::

    {"lang": "en", "year": {"gte": 2000, "lt": 2010}, "draft": False}

A value that is a string, an integer or a boolean is an equality match; a
dict with some of ``gt``, ``gte``, ``lt``, ``lte`` is a range (numbers). A
field named ``must`` needs the full form. Anything else (floats to match,
lists, ``$or``) raises :class:`~kindex.errors.InvalidArgumentError` before a
request is sent.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from .errors import InvalidArgumentError

RANGE_KEYS = ("gt", "gte", "lt", "lte")
#: The node's limit on conditions per filter.
MAX_CONDITIONS = 64

Filter = Mapping[str, Any]


def _bad(msg: str) -> InvalidArgumentError:
    return InvalidArgumentError(msg, code="invalid_argument")


def _condition(i: int, field: Any, match: Any = None, rng: Any = None) -> dict[str, Any]:
    if not isinstance(field, str) or not field:
        raise _bad(f"filter condition {i}: field must be a non-empty string, got {field!r}")
    if (match is None) == (rng is None):
        raise _bad(f"filter condition {i} on {field!r}: give exactly one of match or range")
    if match is not None:
        # bool before int: bool is an int subclass in Python.
        if isinstance(match, bool):
            return {"field": field, "match": match}
        if isinstance(match, int):
            if not -(2**63) <= match < 2**63:
                raise _bad(f"filter condition {i} on {field!r}: integer out of i64 range")
            return {"field": field, "match": match}
        if isinstance(match, str):
            return {"field": field, "match": match}
        raise _bad(
            f"filter condition {i} on {field!r}: match takes a string, an integer or a "
            f"boolean, got {type(match).__name__} (use a range for floats)"
        )
    if not isinstance(rng, Mapping):
        raise _bad(f"filter condition {i} on {field!r}: range must be a dict")
    unknown = set(rng) - set(RANGE_KEYS)
    if unknown:
        raise _bad(
            f"filter condition {i} on {field!r}: unknown range keys {sorted(unknown)} "
            f"(allowed: gt, gte, lt, lte)"
        )
    bounds: dict[str, float] = {}
    for k in RANGE_KEYS:
        if rng.get(k) is None:
            continue
        v = rng[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _bad(f"filter condition {i} on {field!r}: {k} must be a finite number")
        bounds[k] = float(v)
    if not bounds:
        raise _bad(f"filter condition {i} on {field!r}: a range needs one of gt, gte, lt, lte")
    return {"field": field, "range": bounds}


def normalize(f: Optional[Filter]) -> Optional[dict[str, Any]]:
    """Either spelling -> the full form ``{"must": [...]}``; ``None``/``{}`` -> ``None``."""
    if f is None:
        return None
    if not isinstance(f, Mapping):
        raise _bad(f"a filter must be a dict, got {type(f).__name__}")
    if not f:
        return None
    must: list[dict[str, Any]] = []
    if set(f) == {"must"} and isinstance(f["must"], (list, tuple)):
        for i, c in enumerate(f["must"]):
            if not isinstance(c, Mapping):
                raise _bad(f"filter condition {i} must be a dict")
            extra = set(c) - {"field", "match", "range"}
            if extra:
                raise _bad(f"filter condition {i}: unknown keys {sorted(extra)}")
            must.append(_condition(i, c.get("field"), c.get("match"), c.get("range")))
    else:
        for i, (field, v) in enumerate(f.items()):
            if isinstance(v, Mapping):
                must.append(_condition(i, field, rng=v))
            else:
                must.append(_condition(i, field, match=v))
    if len(must) > MAX_CONDITIONS:
        raise _bad(f"filter has {len(must)} conditions; the limit is {MAX_CONDITIONS}")
    return {"must": must} if must else None


def to_proto(f: Optional[Filter], pb: Any) -> Any:
    """The ``kindex.v1.Filter`` message for ``f`` (``pb`` is the generated module)."""
    n = normalize(f)
    if n is None:
        return None
    out = pb.Filter()
    for c in n["must"]:
        cond = out.must.add(field=c["field"])
        if "match" in c:
            m = c["match"]
            if isinstance(m, bool):
                cond.match.boolean = m
            elif isinstance(m, int):
                cond.match.integer = m
            else:
                cond.match.text = m
        else:
            for k, v in c["range"].items():
                setattr(cond.range, k, v)
    return out
