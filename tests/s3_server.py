"""pytest plugin: a real S3 protocol server (moto) on 127.0.0.1 for the whole test session.

Load it with ``pytest_plugins = ["tests.s3_server"]`` in tests/conftest.py, then:

    def test_x(s3_server):
        uri = s3_server.create_bucket("shards")      # -> "s3://shards"
        fs, path = tcl.storage.resolve(uri, endpoint_url=s3_server.endpoint_url)

The server is ``python -m moto.server`` in a subprocess (not moto's in-process mock), so the
pyarrow S3 client, which talks HTTP from C++, and Ray workers in other processes see the same
buckets. Dummy credentials are put in the environment for the session, together with
AWS_ENDPOINT_URL pointing at the server, so that nothing can reach real AWS by accident.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

HOST = "127.0.0.1"
from tests.helpers import CREDENTIALS  # noqa: E402


@dataclass
class S3Server:
    endpoint_url: str

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` if it does not exist; returns ``s3://name``."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return f"s3://{name}"

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        resp = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in resp.get("Contents", []))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # it answered, even if with an error status
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"moto server did not answer at {url} within {timeout:.0f}s")


@pytest.fixture(scope="session")
def s3_server():
    pytest.importorskip("moto.server")
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    env = {**os.environ, **CREDENTIALS}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    mp = pytest.MonkeyPatch()
    try:
        _wait_until_up(endpoint + "/", proc)
        for k, v in CREDENTIALS.items():
            mp.setenv(k, v)
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        yield S3Server(endpoint_url=endpoint)
    finally:
        mp.undo()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
