"""One bulk load of a .npy file through the kindex Python client; prints one
JSON line. Run by bench/python_bulk.sh (which compares it with the Rust CLI)."""

from __future__ import annotations

import argparse
import json
import time

t0 = time.monotonic()

import numpy as np  # noqa: E402 - imports are part of what a user waits for

import kindex  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--id-prefix", default="")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--protocol", default="grpc")
    a = ap.parse_args()
    vecs = np.load(a.file, mmap_mode="r")
    with kindex.Client(a.addr, protocol=a.protocol) as c:
        r = c.upsert_many(
            vecs, id_prefix=a.id_prefix, batch_size=a.batch, concurrency=a.concurrency, progress=False
        )
    print(
        json.dumps(
            {
                "rows": r.points,
                "seconds": r.seconds,
                "vectorsPerSecond": r.points_per_second,
                "retries": r.retries,
                "processSeconds": time.monotonic() - t0,
            }
        )
    )


if __name__ == "__main__":
    main()
