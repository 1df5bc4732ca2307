"""Memory of a batch's parent over an S3 prefix (or a local folder), two ways side by side, each in a fresh process:

- `list`: samseg.engine.batch.list_sources, every key kept as one list of URIs (a local batch,
  or a sharded one whose dataset classes are fitted on every image);
- `sharded`: what the parent of `samseg segment s3://… --fan-out deployment` does over the whole
  batch, less Prefect: a Listing (the prefix listed once, page by page, into a local file), shards
  made from it (flows.fanout._shards, names made unique on disk), each shard's report entries
  spilled (samseg.edges.spill) as if it had completed.

    python -m benchmarks.listing [--keys 10000 100000] [--synthetic | --local] [--shard-size 256]

A moto S3 server on loopback in a child process, its bucket filled with empty `.jpg` objects
through moto's backend (no HTTP per object). Each mode prints the peak of Python allocations
(tracemalloc) and the growth of the process's peak RSS (SQLite's pages are not Python's).
moto answers every page by scanning the whole bucket, so 10⁶ keys take hours there.
`--local` lists a folder of as many empty files under TMPDIR instead (no server).
`--synthetic` serves the same ListObjectsV2 pages (1000 keys each, in key order, continuation
tokens) from a counter instead of a bucket, so 10⁶ keys list in a minute through the same boto3
paginator and samseg code; nothing else differs for the parent.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

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


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _parent(mode: str, prefix: str, keys: int, shard_size: int, result: "mp.Queue") -> None:
    """Child: the parent's side of one mode, measured. "list": list_sources, one list of URIs (a
    local batch, dataset classes). "sharded": what a sharded parent does over the whole batch
    without Prefect: a Listing (spooled to a local file), then the shards made from it (names
    made unique on disk) and each shard's report entries spilled as if it had completed."""
    import resource

    from flows.fanout import _shards
    from samseg.edges.outdirs import named_inputs
    from samseg.edges.spill import SpilledEntries
    from samseg.engine.batch import Listing, list_sources

    list(Listing(prefix.replace("/in/", "/none/")))  # imports (and the boto3 client) first: not the listing's memory
    SpilledEntries()
    rss0 = _rss_bytes()
    tracemalloc.start()
    t0 = time.perf_counter()
    if mode == "list":
        n = len(list_sources(prefix))
    else:
        listing, entries, n = Listing(prefix), SpilledEntries(), 0
        for shard in _shards(named_inputs(listing), shard_size):
            entries.begin(shard.index, shard.uris)
            entries.add(shard.index, [{"image": u, "name": m, "status": "completed", "n_masks": 0, "n_classes": 0,
                                       "out_dir": f"s3://out/{m}", "shard": shard.index, "attempts": 1}
                                      for u, m in zip(shard.uris, shard.names)])
            n += len(shard.uris)
        assert len(entries) == n == len(listing), (len(entries), n, len(listing))
    seconds = time.perf_counter() - t0
    _held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result.put({"mode": mode, "keys": n, "seconds": round(seconds, 1), "peak_mb": round(peak / 2**20, 1),
                "rss_growth_mb": round(max(0, rss_peak - rss0) / 2**20, 1), "peak_bytes_per_key": round(peak / max(n, 1))})


def measure(keys: int, synthetic: bool = False, modes: tuple[str, ...] = ("list", "sharded"),
            shard_size: int = 256, local: bool = False) -> list[dict[str, float]]:
    """Each mode's row; local: a folder of `keys` empty files under TMPDIR instead of an S3 prefix."""
    import tempfile

    ctx = mp.get_context("spawn")
    if local:
        with tempfile.TemporaryDirectory(prefix="samseg-listing-") as folder:
            (Path(folder) / "in").mkdir()
            (Path(folder) / "none").mkdir()  # the warm-up's empty listing
            for i in range(keys):
                (Path(folder) / "in" / f"img{i:07d}.jpg").touch()
            return _measure_modes(ctx, f"{folder}/in/", keys, modes, shard_size)
    port = _free_port()
    ready = ctx.Event()
    child = ctx.Process(target=_serve_synthetic if synthetic else _serve, args=(port, keys, ready), daemon=True)
    child.start()
    try:
        if not ready.wait(timeout=3600):
            raise SystemExit("moto did not start")
        os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
                           "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"})
        return _measure_modes(ctx, f"s3://{BUCKET}/in/", keys, modes, shard_size)
    finally:
        child.kill()


def _measure_modes(ctx: Any, prefix: str, keys: int, modes: tuple[str, ...], shard_size: int) -> list[dict[str, float]]:
    rows = []
    for mode in modes:  # each in a process of its own: its peak RSS is its own
        result = ctx.Queue()
        parent = ctx.Process(target=_parent, args=(mode, prefix, keys, shard_size, result))
        parent.start()
        rows.append(result.get())
        parent.join()
        print(f"{rows[-1]['keys']:>9} keys, {mode:>7}: {rows[-1]['seconds']:7.1f} s, Python peak {rows[-1]['peak_mb']:7.1f} MB "
              f"({rows[-1]['peak_bytes_per_key']} B/key), RSS growth {rows[-1]['rss_growth_mb']:7.1f} MB", flush=True)
        assert rows[-1]["keys"] == keys, (rows[-1], keys)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--synthetic", action="store_true", help="pages from a counter, not a moto bucket (10^6 keys in a minute)")
    ap.add_argument("--local", action="store_true", help="a local folder of empty files (under TMPDIR), not an S3 prefix")
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--modes", nargs="+", choices=("list", "sharded"), default=["list", "sharded"])
    args = ap.parse_args(argv)
    for n in args.keys:
        measure(n, args.synthetic, tuple(args.modes), shard_size=args.shard_size, local=args.local)  # prints each mode as it ends
    return 0


if __name__ == "__main__":
    sys.exit(main())
