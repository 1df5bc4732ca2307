"""samseg.edges.storage: key validation (pure), local files, and S3 against a real moto server over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from samseg.edges import storage
from samseg.edges.storage import StorageError, StorageNotFound
from servers import free_port

# ---------------------------------------------------------------- keys (pure)


@pytest.mark.parametrize(
    "bad",
    ["", "/abs/key", "a/../b", "..", "a/./b", "a//b", "a/b/", "a\\b", "a/%2e%2e/b", "%2E%2E", "a/%2e", "x\x00y", "x\ny", "x\x7fy"],
)
def test_validate_key_rejects(bad: str) -> None:
    with pytest.raises(StorageError):
        storage.validate_key(bad)


@pytest.mark.parametrize("good", ["a", "a/b/c.png", "img.v2/x..y.npy", "..hidden", "a/%20b"])
def test_validate_key_accepts(good: str) -> None:
    assert storage.validate_key(good) == good


def test_join_key_stays_under_prefix() -> None:
    assert storage.join_key("runs/x/", "img", "a.png") == "runs/x/img/a.png"
    assert storage.join_key("", "a", "b/c") == "a/b/c"
    for escape in ("..", "../other", "/etc/passwd", "a/../../b"):
        with pytest.raises(StorageError):
            storage.join_key("runs/x", escape)


def test_split_and_join_uri() -> None:
    assert storage.split_s3_uri("s3://b/k/x.png") == ("b", "k/x.png")
    assert storage.split_s3_uri("s3://b") == ("b", "")
    assert storage.join_uri("s3://b/pre/", "x", "y.npy") == "s3://b/pre/x/y.npy"
    assert storage.join_uri("s3://b", "y.npy") == "s3://b/y.npy"
    with pytest.raises(StorageError):
        storage.split_s3_uri("s3:///nobucket")
    with pytest.raises(StorageError):
        storage.join_uri("/tmp/x", "../y")
    assert not storage.is_s3_uri(Path("s3:/x"))  # a Path is never an S3 URI


# ---------------------------------------------------------------- local


def test_local_roundtrip_atomic_and_listing(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "dir" / "a.bin"
    storage.write_bytes(target, b"one")
    storage.write_bytes(target, b"two")
    assert storage.read_bytes(target) == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["a.bin"]  # no temp files left behind
    assert storage.exists(target) and not storage.exists(tmp_path / "nope")
    with pytest.raises(StorageNotFound, match="nope"):
        storage.read_bytes(tmp_path / "nope")

    imgs = tmp_path / "imgs"
    for name in ("b.JPG", "a.png", "sub/c.jpeg", "notes.txt", ".hidden.png"):
        storage.write_bytes(imgs / name, b"x")
    # Same rule as samseg.edges.images.find_images: direct children only, hidden skipped.
    assert storage.list_images(imgs) == [str(imgs / "a.png"), str(imgs / "b.JPG")]
    assert storage.list_images(str(imgs / "*.png")) == [str(imgs / "a.png")]
    assert storage.list_images(str(imgs / "a.png")) == [str(imgs / "a.png")]


def test_local_upload_and_download(tmp_path: Path) -> None:
    src = tmp_path / "src"
    storage.write_bytes(src / "labels.png", b"L")
    storage.write_bytes(src / "classes" / "class_0.png", b"C")
    dest = tmp_path / "published"
    written = storage.upload_dir(src, str(dest))
    assert len(written) == 2 and storage.is_complete(str(dest))
    back = storage.download_prefix(str(dest), tmp_path / "back", require_success=True)
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in back) == ["_SUCCESS", "classes/class_0.png", "labels.png"]


# ---------------------------------------------------------------- S3 over HTTP (moto server)


@pytest.mark.integration
def test_s3_roundtrip_list_and_missing(s3_bucket: str) -> None:  # noqa: F811
    base = f"s3://{s3_bucket}/in"
    storage.write_bytes(f"{base}/x.bin", b"\x00\x01payload")
    assert storage.read_bytes(f"{base}/x.bin") == b"\x00\x01payload"
    assert storage.exists(f"{base}/x.bin") and not storage.exists(f"{base}/y.bin")
    with pytest.raises(StorageNotFound, match=f"s3://{s3_bucket}/in/y.bin"):
        storage.read_bytes(f"{base}/y.bin")
    with pytest.raises(StorageNotFound, match="bucket"):
        storage.read_bytes("s3://no-such-bucket-here/x.bin")

    for name in ("b.jpg", "a.PNG", "sub/c.jpeg", "readme.txt", ".hidden.jpg"):
        storage.write_bytes(f"{base}/photos/{name}", b"img")
    storage.write_bytes(f"{base}/photos2/other.jpg", b"img")  # sibling prefix must not leak in
    expected = [f"{base}/photos/a.PNG", f"{base}/photos/b.jpg"]  # not recursive, like local folders
    assert storage.list_images(f"{base}/photos") == expected
    assert storage.list_images(f"{base}/photos/") == expected
    assert storage.list_images(f"{base}/photos/b.jpg") == [f"{base}/photos/b.jpg"]
    assert storage.list_images(f"s3://{s3_bucket}/empty") == []
    with pytest.raises(StorageError, match=f"'s3://{s3_bucket}/a/../b': '.' and '..' segments"):
        storage.write_bytes(f"s3://{s3_bucket}/a/../b", b"x")


def _upload_cut_off_at(monkeypatch: pytest.MonkeyPatch, nth: int, src: Path, dest: str) -> None:
    """upload_dir(src, dest) failing at its nth write (a crash part-way), then writes work again."""
    real_write, calls = storage.write_bytes, {"n": 0}

    def cut_off(uri, data):  # noqa: ANN001
        calls["n"] += 1
        if calls["n"] == nth:
            raise StorageError(f"{uri}: injected failure")
        real_write(uri, data)

    monkeypatch.setattr(storage, "write_bytes", cut_off)
    with pytest.raises(StorageError, match="injected"):
        storage.upload_dir(src, dest)
    monkeypatch.setattr(storage, "write_bytes", real_write)


@pytest.mark.integration
def test_s3_upload_dir_marker_last(s3_bucket: str, tmp_path: Path, s3_env, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    src = tmp_path / "img1"
    storage.write_bytes(src / "labels.png", b"L")
    storage.write_bytes(src / "summary.json", b"{}")
    storage.write_bytes(src / "classes" / "class_0.png", b"C")
    dest = f"s3://{s3_bucket}/out/img1"

    # A crash part-way through leaves files but no marker → readers see "incomplete".
    _upload_cut_off_at(monkeypatch, 2, src, dest)
    assert not storage.is_complete(dest)
    with pytest.raises(StorageError, match="incomplete"):
        storage.download_prefix(dest, tmp_path / "dl", require_success=True)

    written = storage.upload_dir(src, dest)
    assert sorted(written) == sorted(f"{dest}/{k}" for k in ("labels.png", "summary.json", "classes/class_0.png"))
    assert storage.is_complete(dest)
    # The marker is the last object written.
    objs = s3_env.client().list_objects_v2(Bucket=s3_bucket, Prefix="out/img1/")["Contents"]
    newest = max(objs, key=lambda o: (o["LastModified"], o["Key"] == "out/img1/_SUCCESS"))
    assert newest["Key"] == "out/img1/_SUCCESS"
    got = storage.download_prefix(dest, tmp_path / "dl", require_success=True)
    assert (tmp_path / "dl" / "classes" / "class_0.png").read_bytes() == b"C" and len(got) == 4


@pytest.mark.integration
def test_s3_download_rejects_hostile_keys(s3_bucket: str, s3_env, tmp_path: Path) -> None:  # noqa: F811
    s3_env.client().put_object(Bucket=s3_bucket, Key="p/a/../../escape.txt", Body=b"x")
    with pytest.raises(StorageError, match="not allowed"):
        storage.download_prefix(f"s3://{s3_bucket}/p", tmp_path / "dl")
    assert not (tmp_path / "escape.txt").exists()


def test_s3_unreachable_fails_fast_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("SAMSEG_S3_RETRIES", "2")
    monkeypatch.setenv("SAMSEG_S3_CONNECT_TIMEOUT", "1")

    import botocore.endpoint

    sends = {"n": 0}
    real_send = botocore.endpoint.Endpoint._send

    def counting_send(self, request):  # noqa: ANN001
        sends["n"] += 1
        return real_send(self, request)

    monkeypatch.setattr(botocore.endpoint.Endpoint, "_send", counting_send)
    with pytest.raises(StorageError) as info:
        storage.read_bytes("s3://bucket/key.png")
    message = str(info.value)
    assert "s3://bucket/key.png" in message and "\n" not in message
    assert sends["n"] == 3  # 1 call + 2 retries, then give up (bounded, never a hang)


def _class_dir(path: Path, n_classes: int) -> Path:
    storage.write_bytes(path / "summary.json", json.dumps({"n_clusters": n_classes}).encode())
    for c in range(n_classes):
        storage.write_bytes(path / "classes" / f"class_{c}.png", b"C%d" % c)
    return path


@pytest.mark.integration
def test_s3_republish_with_fewer_classes_leaves_no_stale_class_files(s3_bucket: str, s3_env, tmp_path: Path,  # noqa: F811
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    dest = f"s3://{s3_bucket}/out/run2/bears"
    storage.upload_dir(_class_dir(tmp_path / "five", 5), dest)
    s3_env.client().put_object(Bucket=s3_bucket, Key="out/run2/bears/notes.txt", Body=b"mine")  # the user's
    # A republish cut off after its first file: the next one must still clean up after both.
    _upload_cut_off_at(monkeypatch, 3, _class_dir(tmp_path / "three", 3), dest)

    storage.upload_dir(_class_dir(tmp_path / "one", 1), dest)
    keys = sorted(o["Key"] for o in s3_env.client().list_objects_v2(Bucket=s3_bucket, Prefix="out/run2/")["Contents"])
    assert keys == ["out/run2/bears/_SUCCESS", "out/run2/bears/classes/class_0.png", "out/run2/bears/notes.txt",
                    "out/run2/bears/summary.json"]  # class_1..4 gone; the user's object stays
    got = storage.download_prefix(dest, tmp_path / "dl", require_success=True)
    assert sorted(p.relative_to(tmp_path / "dl").as_posix() for p in got) == [
        "_SUCCESS", "classes/class_0.png", "summary.json"]  # readers trust only what _SUCCESS lists


def test_local_republish_removes_what_it_no_longer_lists(tmp_path: Path) -> None:
    dest = tmp_path / "published"
    storage.upload_dir(_class_dir(tmp_path / "five", 5), str(dest))
    (dest / "mine.txt").write_text("user file")
    storage.upload_dir(_class_dir(tmp_path / "two", 2), str(dest))
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "_SUCCESS", "classes/class_0.png", "classes/class_1.png", "mine.txt", "summary.json"]
