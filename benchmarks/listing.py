"""Memory of a batch's parent while it lists an S3 prefix: what `samseg segment s3://…` holds
before the first shard is submitted (samseg.engine.batch.list_sources: every key, page by page
through boto3's paginator, kept as one list of URIs).

    python -m benchmarks.listing [--keys 10000 100000] [--synthetic]

A moto S3 server on loopback in a child process, its bucket filled with empty `.jpg` objects
through moto's backend (no HTTP per object); then, in this process, `list_sources` of the prefix
under tracemalloc: the peak of Python allocations during the listing and the bytes still held by
the returned list, per key. moto answers every page by scanning the whole bucket, so 10⁶ keys
take hours there. `--synthetic` serves the same ListObjectsV2 pages (1000 keys each, in key
order, continuation tokens) from a counter instead of a bucket, so 10⁶ keys list in a minute
through the same boto3 paginator and samseg code; nothing else differs for the parent.
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


_PAGE = 1000  # keys per ListObjectsV2 page, as S3 answers by default


def _page_xml(prefix: str, delimiter: str, start: int, keys: int) -> bytes:
    """A ListObjectsV2 page of the synthetic bucket: keys in/img<i>.jpg for start <= i < start + _PAGE."""
    end = min(keys, start + _PAGE) if prefix == "in/" else start
    contents = "".join(f"<Contents><Key>in/img{i:07d}.jpg</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
                       f"<ETag>&quot;d41d8cd98f00b204e9800998ecf8427e&quot;</ETag><Size>0</Size>"
                       f"<StorageClass>STANDARD</StorageClass></Contents>" for i in range(start, end))
    more = end < keys and prefix == "in/"
    token = f"<NextContinuationToken>{end}</NextContinuationToken>" if more else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{BUCKET}</Name><Prefix>{prefix}</Prefix><Delimiter>{delimiter}</Delimiter><KeyCount>{end - start}"
            f"</KeyCount><MaxKeys>{_PAGE}</MaxKeys><IsTruncated>{str(more).lower()}</IsTruncated>{contents}{token}"
            "</ListBucketResult>").encode()


def _serve_synthetic(port: int, keys: int, ready: "mp.synchronize.Event") -> None:
    """Child: ListObjectsV2 of `keys` empty objects under in/ on 127.0.0.1:port, computed per page."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlparse

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 — http.server's name
            q = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
            body = _page_xml(q.get("prefix", ""), q.get("delimiter", ""), int(q.get("continuation-token", 0)), keys)
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # no line per page
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Pages)
    ready.set()
    server.serve_forever()


def measure(keys: int, synthetic: bool = False) -> dict[str, float]:
    port = _free_port()
    ready = mp.get_context("spawn").Event()
    child = mp.get_context("spawn").Process(target=_serve_synthetic if synthetic else _serve, args=(port, keys, ready),
                                            daemon=True)
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
    ap.add_argument("--synthetic", action="store_true", help="pages from a counter, not a moto bucket (10^6 keys in a minute)")
    args = ap.parse_args(argv)
    rows = [measure(n, args.synthetic) for n in args.keys]
    for r in rows:
        print(f"{r['keys']:>9} keys: listed in {r['seconds']:7.1f} s, peak {r['peak_mb']:7.1f} MB "
              f"({r['peak_bytes_per_key']} B/key), held after {r['held_mb']:7.1f} MB ({r['held_bytes_per_key']} B/key)")
    last = rows[-1]
    print(f"10^6 keys, by the {last['keys']}-key rate: peak ≈ {last['peak_bytes_per_key'] * 1e6 / 2**20:.0f} MB, "
          f"held ≈ {last['held_bytes_per_key'] * 1e6 / 2**20:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
