"""A batch too large for memory (samseg.edges.spill, samseg.engine.batch.Listing): names made
unique on disk as in memory, entries spilled and read back in input order with their counts,
the report streamed as the JSON json.dumps would write, and an S3 prefix listed page by page."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from samseg.edges import storage
from samseg.edges.outdirs import iter_unique_names, named_inputs, unique_names
from samseg.edges.spill import DiskSet, SpilledEntries, json_pieces, spill_entries, write_json
from servers import moto_s3, s3_bucket, s3_env  # noqa: F401


def test_disk_set_is_a_set() -> None:
    s = DiskSet()
    odd = b"caf\xe9.png".decode("utf-8", "surrogateescape")  # a Latin-1 file name, as os.listdir gives it
    for k in ("b", "a", "b", "ä", "", odd):
        s.add(k)
    assert len(s) == 5 and "a" in s and odd in s and "c" not in s and 3 not in s
    assert sorted(s) == sorted({"b", "a", "ä", "", odd})
    s.discard("a")
    s.discard("zz")
    assert len(s) == 4 and "a" not in s


def test_names_made_unique_on_disk_are_the_names_made_in_memory() -> None:
    # the -2 of one name meets a real "x-2", odd names get their hash, a batch file's name is tagged
    uris = ["/a/x.png", "/b/x.jpg", "/c/x-2.png", "/d/x.png", "/e/x y.png", "/f/x_y.png", "/g/..png",
            "/h/batch_summary.png", "s3://b/k/x.png"]
    assert list(iter_unique_names(uris, DiskSet())) == unique_names(uris)
    assert len(set(unique_names(uris))) == len(uris)
    # as a batch pairs its inputs with their names: a list's, or a listing's read one at a time
    assert list(named_inputs(uris)) == list(named_inputs(iter(uris))) == list(zip(uris, unique_names(uris)))


def _entry(uri: str, status: str = "completed", **more: object) -> dict:
    return {"image": uri, "name": Path(uri).stem, "status": status, **more}


def test_spilled_entries_come_back_in_input_order_with_their_counts() -> None:
    spilled = SpilledEntries()
    spilled.begin(1, ["/c", "/d"])
    spilled.begin(0, ["/a", "/b"])
    spilled.add(1, [_entry("/d", attempts=1)])  # /c crashed: run again, below
    spilled.add(0, [_entry("/b", tracking_error="down"), _entry("/a", "failed", error="/a: bad")])
    spilled.begin(1, ["/c"])  # a retry keeps the shard's first order
    spilled.add(1, [_entry("/c", attempts=2)])
    assert [e["image"] for e in spilled] == ["/a", "/b", "/c", "/d"] and len(spilled) == 4
    assert spilled.counts == {"succeeded": 3, "failed": 1, "untracked": 1, "retried": 1}
    assert [e["image"] for e in spilled] == ["/a", "/b", "/c", "/d"]  # read again: the same
    assert pickle.loads(pickle.dumps(spilled)) == list(spilled)  # a persisted flow result: the list it stands for


def test_entries_spilled_in_parts_come_back_whole_in_order() -> None:
    entries = [_entry(f"/{c}", "failed" if c == "c" else "completed") for c in "edcba"]  # not sorted: input order
    spilled = spill_entries(iter(entries), per_part=2)  # three parts, the last of one
    assert list(spilled) == entries and len(spilled) == 5 and spilled.counts["failed"] == 1
    assert list(spill_entries(iter([]))) == []


def test_a_report_streamed_from_disk_is_the_json_of_its_entries(tmp_path: Path) -> None:
    plain = {"source": "s3://b/in", "images": [_entry("/a"), _entry("/b")], "failed": 0, "classes": {"mode": "image"}}
    assert "".join(json_pieces(plain)) == json.dumps(plain, indent=2)  # nothing spilled: json.dumps itself
    spilled = SpilledEntries()
    spilled.begin(0, ["/a", "/b"])
    spilled.add(0, plain["images"])
    write_json({**plain, "images": spilled}, str(tmp_path / "r.json"), scrub=lambda s: s.replace("s3://b", "s3://***"))
    assert json.loads((tmp_path / "r.json").read_text()) == {**plain, "source": "s3://***/in"}
    empty = SpilledEntries()
    assert json.loads("".join(json_pieces({"images": empty}))) == {"images": []}


def test_an_s3_prefix_is_listed_page_by_page(s3_bucket: str, monkeypatch) -> None:  # noqa: F811
    from samseg.engine.batch import Listing, list_sources

    for i in range(5):
        storage.write_bytes(f"s3://{s3_bucket}/in/{i}.jpg", b"")
    storage.write_bytes(f"s3://{s3_bucket}/in/notes.txt", b"")
    monkeypatch.setattr(storage, "LIST_PAGE", 2)
    requests: list[str] = []
    storage._client().meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: requests.append("list"))
    keys = storage.iter_keys(f"s3://{s3_bucket}/in")
    assert next(keys) == f"s3://{s3_bucket}/in/0.jpg" and len(requests) == 1  # the first page only
    assert len(list(keys)) == 5 and len(requests) == 3
    listing = Listing(f"s3://{s3_bucket}/in/")
    assert len(listing) == 5 and list(listing) == list_sources(f"s3://{s3_bucket}/in/")
    twice = Listing([f"s3://{s3_bucket}/in/", f"s3://{s3_bucket}/in/3.jpg", f"s3://{s3_bucket}/in"])
    assert len(twice) == 5 and list(twice) == list(listing)  # several specs: each image once


def test_a_local_file_is_written_to_s3_and_hashed_without_being_read_whole(s3_bucket: str, tmp_path: Path) -> None:  # noqa: F811
    import hashlib

    big = tmp_path / "batch_summary.json"
    big.write_bytes(b"x" * (3 << 20))  # three of sha256_of's reads
    storage.write_bytes(f"s3://{s3_bucket}/out/batch_summary.json", big)
    assert storage.read_bytes(f"s3://{s3_bucket}/out/batch_summary.json") == big.read_bytes()
    assert storage.sha256_of(f"s3://{s3_bucket}/out/batch_summary.json") == hashlib.sha256(big.read_bytes()).hexdigest()


def test_a_local_glob_that_names_one_file_twice_lists_it_once(tmp_path: Path) -> None:
    from samseg.engine.batch import Listing, list_sources

    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
    (tmp_path / "p.png").write_bytes(b"")
    glob = str(tmp_path / "*" / ".." / "p.png")  # x/../p.png and y/../p.png: one file
    assert list(Listing(glob)) == list_sources(glob) == [str(tmp_path / "p.png")]
