"""tcl.storage: URI resolution, atomic writes, listing; local and S3 (moto on 127.0.0.1). No Ray."""

from __future__ import annotations

import os
import pickle

import pyarrow.fs as pafs
import pytest

from tcl import storage


def test_resolve_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = storage.resolve("runs/x")
    assert isinstance(fs, pafs.LocalFileSystem)
    assert path == str(tmp_path / "runs" / "x")
    assert storage.resolve(f"file://{tmp_path}/a")[1] == f"{tmp_path}/a"
    with pytest.raises(ValueError, match="unsupported URI scheme 'gs'"):
        storage.resolve("gs://bucket/x")
    with pytest.raises(ValueError, match="no bucket"):
        storage.resolve("s3://")


def test_resolve_s3_endpoint_from_argument_and_env(monkeypatch):
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")

    fs, path = storage.resolve("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:9999")
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/some/prefix"
    assert fs.region == "us-east-1"
    # pyarrow's S3FileSystem ignores AWS_ENDPOINT_URL; ours must not. The pickled form carries
    # the settings, which is also how they reach Ray workers.
    assert "127.0.0.1:9999" in repr(fs.__reduce__())

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:7777")
    assert "127.0.0.1:7777" in repr(storage.resolve("s3://b")[0].__reduce__())
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:8888")  # the S3-specific one wins
    assert "127.0.0.1:8888" in repr(storage.resolve("s3://b")[0].__reduce__())

    with pytest.raises(ValueError, match="not of the form"):
        storage.resolve("s3://b", endpoint_url="ftp://host")
    with pytest.raises(ValueError, match="incomplete"):
        storage.s3_filesystem(access_key="k")  # explicit credentials come in pairs


def test_join():
    assert storage.join("s3://b/p/", "x", "/y.parquet") == "s3://b/p/x/y.parquet"
    assert storage.join("/tmp/a", "b") == "/tmp/a/b"
    assert storage.join("s3://b", "") == "s3://b"


def test_atomic_write_local_replaces_and_leaves_nothing_behind(tmp_path):
    target = str(tmp_path / "sub" / "f.bin")
    storage.write_bytes_atomic(target, b"one")
    storage.write_bytes_atomic(target, b"two")
    assert storage.read_bytes(target) == b"two"
    assert os.listdir(tmp_path / "sub") == ["f.bin"]


def test_atomic_write_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    target = str(tmp_path / "f.bin")
    storage.write_bytes_atomic(target, b"old")

    # Failure while writing: old content intact, no temp file.
    with pytest.raises(TypeError):
        storage.write_bytes_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert storage.read_bytes(target) == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]

    # Failure at the rename (e.g. killed between write and publish): still nothing partial.
    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        storage.write_bytes_atomic(str(tmp_path / "new.bin"), b"x" * 1_000_000)
    assert os.listdir(tmp_path) == ["f.bin"]


def test_list_files_and_exists(tmp_path):
    for name in ("b.parquet", "a.parquet", "c.txt", ".a.parquet.tmp", "_SUCCESS", "d/e.PARQUET"):
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    root = str(tmp_path)
    assert storage.list_files(root, ".parquet") == [f"{root}/a.parquet", f"{root}/b.parquet", f"{root}/d/e.PARQUET"]
    assert len(storage.list_files(root)) == 4
    assert storage.list_files(f"{root}/a.parquet", (".parquet",)) == [f"{root}/a.parquet"]
    assert storage.exists(f"{root}/c.txt") and not storage.exists(f"{root}/nope")
    with pytest.raises(FileNotFoundError, match="nothing at"):
        storage.list_files(f"{root}/nope")
    with pytest.raises(FileNotFoundError, match="no such file"):
        storage.read_bytes(f"{root}/nope")


def test_s3_round_trip(s3_server):
    bucket = s3_server.create_bucket("storage-test")
    uri = storage.join(bucket, "p", "obj.bin")
    storage.write_bytes_atomic(uri, b"payload", endpoint_url=s3_server.endpoint_url)
    storage.write_bytes_atomic(storage.join(bucket, "p", "q", "z.txt"), b"z")  # endpoint from the env
    assert storage.read_bytes(uri) == b"payload"
    assert storage.exists(uri) and not storage.exists(storage.join(bucket, "p", "missing"))
    assert storage.list_files(storage.join(bucket, "p")) == [uri, "s3://storage-test/p/q/z.txt"]
    assert storage.list_files(storage.join(bucket, "p"), ".bin") == [uri]
    storage.delete_file(uri)
    assert not storage.exists(uri)


def test_credentials_from_the_environment_never_travel_inside_the_filesystem(monkeypatch, s3_server):
    """The filesystem object Ray pickles to workers on other machines carries the endpoint and the
    region, not the secret: each process finds its own credentials (instance profile, env)."""
    import pickle

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID1234")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-secret-that-must-stay-home")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-session-token-that-expires")
    fs, _ = storage.resolve("s3://bucket/prefix", endpoint_url=s3_server.endpoint_url)
    blob = pickle.dumps(fs)
    for secret in (b"a-secret-that-must-stay-home", b"a-session-token-that-expires", b"AKIAEXAMPLEKEYID1234"):
        assert secret not in blob
    assert s3_server.endpoint_url.split("//")[1].encode() in blob
    assert set(storage.s3_options()) <= {"endpoint_url", "region"}
    # and it still works, finding the credentials in this process's environment (moto accepts any)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = s3_server.create_bucket("no-baked-keys")
    storage.write_bytes_atomic(storage.join(bucket, "x.txt"), b"hello", endpoint_url=s3_server.endpoint_url)
    assert storage.read_bytes(storage.join(bucket, "x.txt"), endpoint_url=s3_server.endpoint_url) == b"hello"
