"""Batches of points to upsert, and their wire encodings.

A bulk load spends most of its client time turning floats into bytes. The
protobuf encoding of a vector is a packed ``repeated float``: the raw
little-endian float32 bytes behind a tag and a length. So a batch keeps its
vectors as one float32 numpy array and writes ``UpsertRequest`` bytes directly
(``encode_upsert``), instead of building a message object per point with a
Python float per component. ``tests/test_wire.py`` checks the bytes against
the generated protobuf classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from .errors import InvalidArgumentError
from .types import Point


def _bad(msg: str) -> InvalidArgumentError:
    return InvalidArgumentError(msg, code="invalid_argument")


def payload_json(id_: str, payload: Any) -> Optional[str]:
    """A payload as compact JSON text; it must be a JSON object."""
    if payload is None:
        return None
    if not isinstance(payload, Mapping):
        raise _bad(f"point {id_!r}: payload must be a dict (a JSON object), got {type(payload).__name__}")
    try:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise _bad(f"point {id_!r}: payload is not JSON: {e}") from None


@dataclass
class Batch:
    """Rows ``start .. start + len(ids)`` of a load."""

    start: int
    ids: list[str]
    vectors: np.ndarray  # (n, d) float32, C-contiguous
    payloads: list[Optional[str]]  # JSON text per point

    def __len__(self) -> int:
        return len(self.ids)

    def check(self, dimension: Optional[int] = None) -> None:
        """Rejects what the node would reject, naming the row, before sending."""
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.ids):
            raise _bad(f"rows {self.start}..: vectors must be a 2-D array with one row per id")
        if dimension is not None and self.vectors.shape[1] != dimension:
            raise _bad(
                f"rows {self.start}..: vectors have dimension {self.vectors.shape[1]}, "
                f"the index has dimension {dimension}"
            )
        finite = np.isfinite(self.vectors).all(axis=1)
        if not finite.all():
            r = int(np.argmin(finite))
            raise _bad(
                f"row {self.start + r} (id {self.ids[r]!r}): vector has NaN or infinity"
            )
        for r, i in enumerate(self.ids):
            if not isinstance(i, str) or not i or len(i.encode()) > 256:
                raise _bad(f"row {self.start + r}: id must be 1..=256 bytes of text, got {i!r}")


def make_batch(
    start: int, ids: Sequence[str], vectors: Any, payloads: Optional[Sequence[Any]] = None
) -> Batch:
    ids = [str(i) if not isinstance(i, str) else i for i in ids]
    vecs = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if vecs.ndim == 1 and len(ids) == 1:
        vecs = vecs.reshape(1, -1)
    if payloads is None:
        pj: list[Optional[str]] = [None] * len(ids)
    else:
        if len(payloads) != len(ids):
            raise _bad(f"{len(ids)} ids but {len(payloads)} payloads")
        pj = [payload_json(i, p) for i, p in zip(ids, payloads)]
    return Batch(start, ids, vecs, pj)


def _point_row(row: int, p: Any) -> tuple[str, Any, Any]:
    if isinstance(p, Point):
        return p.id, p.vector, p.payload
    if isinstance(p, Mapping):
        try:
            return p["id"], p["vector"], p.get("payload")
        except KeyError as e:
            raise _bad(f"row {row}: a point dict needs {e.args[0]!r}") from None
    if isinstance(p, (tuple, list)) and len(p) in (2, 3):
        return p[0], p[1], (p[2] if len(p) == 3 else None)
    raise _bad(
        f"row {row}: expected a Point, a dict with id/vector[/payload] or an "
        f"(id, vector[, payload]) tuple, got {type(p).__name__}"
    )


def batches(
    data: Any,
    *,
    ids: Optional[Iterable[Any]] = None,
    payloads: Optional[Iterable[Any]] = None,
    batch_size: int,
    id_prefix: str = "",
) -> Iterator[Batch]:
    """Cuts ``data`` into batches lazily (an iterable is read only as far as needed).

    ``data`` is a 2-D array of vectors (``ids`` default to ``id_prefix + row``,
    ``payloads`` optional, both iterables aligned with the rows), or an iterable
    of points (:class:`~kindex.Point`, dicts, or tuples).
    """
    if batch_size < 1:
        raise _bad("batch_size must be at least 1")
    if isinstance(data, np.ndarray) or hasattr(data, "__array__"):
        arr = np.asarray(data)
        if arr.ndim != 2:
            raise _bad(f"vectors must be a 2-D array (rows x dimension), got shape {arr.shape}")
        n = arr.shape[0]
        for name, seq in (("ids", ids), ("payloads", payloads)):
            if seq is not None and hasattr(seq, "__len__") and len(seq) != n:  # type: ignore[arg-type]
                raise _bad(f"{len(seq)} {name} for {n} rows of vectors")  # type: ignore[arg-type]
        id_it = iter(ids) if ids is not None else (f"{id_prefix}{r}" for r in range(n))
        pl_it = iter(payloads) if payloads is not None else None
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            bids = [next(id_it, None) for _ in range(start, stop)]
            if any(b is None for b in bids):
                raise _bad(f"fewer ids than the {n} rows of vectors")
            bpl = [next(pl_it, None) for _ in range(start, stop)] if pl_it is not None else None
            yield make_batch(start, bids, arr[start:stop], bpl)  # type: ignore[arg-type]
        return
    if ids is not None or payloads is not None:
        raise _bad("ids= and payloads= go with an array of vectors; points carry their own")
    row = 0
    cur_ids: list[str] = []
    cur_vecs: list[Any] = []
    cur_pl: list[Any] = []
    for p in data:
        i, v, pl = _point_row(row, p)
        cur_ids.append(i)
        cur_vecs.append(v)
        cur_pl.append(pl)
        row += 1
        if len(cur_ids) == batch_size:
            yield make_batch(row - len(cur_ids), cur_ids, cur_vecs, cur_pl)
            cur_ids, cur_vecs, cur_pl = [], [], []
    if cur_ids:
        yield make_batch(row - len(cur_ids), cur_ids, cur_vecs, cur_pl)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(tag: int, data: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return bytes([(tag << 3) | 2]) + _varint(len(data)) + data


def encode_upsert(index: str, batch: Batch) -> bytes:
    """``kindex.v1.UpsertRequest`` bytes: ``index`` = 1, ``points`` = 2; a ``Point``
    is ``id`` = 1, packed ``vector`` = 2, ``payload_json`` = 3."""
    parts = [_field(1, index.encode())] if index else []
    vecs = batch.vectors.astype("<f4", copy=False)
    for r, id_ in enumerate(batch.ids):
        p = _field(1, id_.encode()) + _field(2, vecs[r].tobytes())
        pj = batch.payloads[r]
        if pj is not None:
            p += _field(3, pj.encode())
        parts.append(_field(2, p))
    return b"".join(parts)


def encode_upsert_json(batch: Batch) -> bytes:
    """The HTTP API's upsert body, with payloads spliced in as the JSON text they already are."""
    parts = []
    for r, id_ in enumerate(batch.ids):
        vec = json.dumps(batch.vectors[r].tolist())
        pj = batch.payloads[r]
        tail = f',"payload":{pj}' if pj is not None else ""
        parts.append(f'{{"id":{json.dumps(id_)},"vector":{vec}{tail}}}')
    return ('{"points":[' + ",".join(parts) + "]}").encode()
