"""Memory of a batch's parent while it lists an S3 prefix: what `samseg segment s3://…` holds
before the first shard is submitted (samseg.engine.batch.list_sources: every key, page by page
through boto3's paginator, kept as one list of URIs).

    python -m benchmarks.listing [--keys 10000 100000]

A moto S3 server on loopback in a child process, its bucket filled with empty `.jpg` objects
through moto's backend (no HTTP per object); then, in this process, `list_sources` of the prefix
under tracemalloc: the peak of Python allocations during the listing and the bytes still held by
the returned list, per key. moto answers every page by scanning the whole bucket, so 10⁶ keys
take hours there; the per-key figures at 10⁴ and 10⁵ keys give the 10⁶ estimate (memory is
linear in the keys: one URI string each).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import sys
import time
import tracemalloc

BUCKET = "samseg-listing"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, keys: int, ready: "mp.synchronize.Event") -> None:
    """Child: moto on 127.0.0.1:port with `keys` empty objects under in/."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per page request
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    backend.create_bucket(BUCKET, "us-east-1")
    for i in range(keys):
        backend.put_object(BUCKET, f"in/img{i:07d}.jpg", b"")
    ready.set()
    while True:
        time.sleep(3600)


def measure(keys: int) -> dict[str, float]:
    port = _free_port()
    ready = mp.get_context("spawn").Event()
    child = mp.get_context("spawn").Process(target=_serve, args=(port, keys, ready), daemon=True)
    child.start()
    try:
        if not ready.wait(timeout=3600):
            raise SystemExit("moto did not start")
        os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
                           "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"})
        from samseg.engine.batch import list_sources

        list_sources(f"s3://{BUCKET}/none/")  # imports and the boto3 client first: not the listing's memory
        tracemalloc.start()
        t0 = time.perf_counter()
        uris = list_sources(f"s3://{BUCKET}/in/")
        seconds = time.perf_counter() - t0
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(uris) == keys, (len(uris), keys)
        return {"keys": keys, "seconds": round(seconds, 1), "peak_mb": round(peak / 2**20, 1),
                "held_mb": round(held / 2**20, 1), "peak_bytes_per_key": round(peak / keys),
                "held_bytes_per_key": round(held / keys)}
    finally:
        child.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, nargs="+", default=[10_000, 100_000])
    args = ap.parse_args(argv)
    rows = [measure(n) for n in args.keys]
    for r in rows:
        print(f"{r['keys']:>9} keys: listed in {r['seconds']:7.1f} s, peak {r['peak_mb']:7.1f} MB "
              f"({r['peak_bytes_per_key']} B/key), held after {r['held_mb']:7.1f} MB ({r['held_bytes_per_key']} B/key)")
    last = rows[-1]
    print(f"10^6 keys, by the {last['keys']}-key rate: peak ≈ {last['peak_bytes_per_key'] * 1e6 / 2**20:.0f} MB, "
          f"held ≈ {last['held_bytes_per_key'] * 1e6 / 2**20:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
