"""One place that turns a URI into a pyarrow filesystem, plus the few file helpers the project needs.

A URI is either a local path (``/data/shards``, ``runs/x``, ``file:///data``) or ``s3://bucket/prefix``.
``resolve`` returns ``(filesystem, path)`` where ``path`` is what that filesystem expects (an absolute
local path, or ``bucket/prefix`` for S3).

S3 settings: the endpoint and region come from explicit arguments, then the environment
(AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION). pyarrow's
S3FileSystem ignores AWS_ENDPOINT_URL, so the endpoint is always passed explicitly. Credentials
are never copied from the environment into the filesystem object: each process that uses it
(the driver, every Ray worker on every node) finds its own through the AWS SDK's default chain
(environment, ~/.aws, the node's instance profile, renewed before they expire), so no secret
travels inside a pickled filesystem and a 12-hour run outlives a session token.

No Ray import here: this module is used by jobs, tests and the serving code alike.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from urllib.parse import urlparse

import pyarrow.fs as pafs

S3_SCHEME = "s3://"


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def s3_filesystem(
    *,
    endpoint_url: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    session_token: str | None = None,
    region: str | None = None,
) -> pafs.S3FileSystem:
    """An S3FileSystem: endpoint and region from the arguments or the environment; credentials only
    when given as arguments (otherwise each process's AWS default chain finds them)."""
    endpoint_url = endpoint_url or _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    region = region or _env("AWS_REGION", "AWS_DEFAULT_REGION")
    if (access_key is None) != (secret_key is None):
        raise ValueError("S3 credentials are incomplete: give both the access key and the secret key")

    kwargs: dict = {}
    if access_key is not None:
        kwargs.update(access_key=access_key, secret_key=secret_key, session_token=session_token)
    if endpoint_url:
        parsed = urlparse(endpoint_url if "://" in endpoint_url else f"https://{endpoint_url}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"S3 endpoint URL {endpoint_url!r} is not of the form http(s)://host[:port]")
        kwargs.update(endpoint_override=parsed.netloc + parsed.path.rstrip("/"), scheme=parsed.scheme)
        # Custom endpoints (MinIO, moto, Ceph) rarely care about the region, but without one pyarrow
        # may try to look the bucket's region up, which such servers do not answer.
        region = region or "us-east-1"
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def s3_options(endpoint_url: str | None = None) -> dict:
    """The S3 settings that are not secret (endpoint, region), from the arguments and this
    process's environment, as keyword arguments for the functions here: pass them to Ray tasks,
    whose environment may lack them. Credentials stay out: each process finds its own."""
    options = {"endpoint_url": endpoint_url or _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
               "region": _env("AWS_REGION", "AWS_DEFAULT_REGION")}
    return {k: v for k, v in options.items() if v}


def resolve(
    uri: str,
    *,
    endpoint_url: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    session_token: str | None = None,
    region: str | None = None,
) -> tuple[pafs.FileSystem, str]:
    """Turn a local path or ``s3://bucket/prefix`` into ``(filesystem, path_within_filesystem)``."""
    if not uri:
        raise ValueError("empty URI")
    if is_s3(uri):
        path = uri[len(S3_SCHEME):].strip("/")
        if not path:
            raise ValueError(f"S3 URI {uri!r} has no bucket")
        fs = s3_filesystem(
            endpoint_url=endpoint_url, access_key=access_key, secret_key=secret_key,
            session_token=session_token, region=region,
        )
        return fs, path
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        if scheme != "file":
            raise ValueError(f"unsupported URI scheme {scheme!r} in {uri!r}: use a local path or s3://bucket/prefix")
        uri = uri[len("file://"):]
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def _to_uri(like: str, path: str) -> str:
    """Re-attach the scheme of ``like`` to a filesystem path returned by pyarrow."""
    return S3_SCHEME + path if is_s3(like) else path


def join(uri: str, *parts: str) -> str:
    """Join path parts with '/', for local paths and s3:// URIs alike."""
    out = uri
    for part in parts:
        part = part.strip("/")
        if part:
            out = out.rstrip("/") + "/" + part
    return out


def read_bytes(uri: str, **s3_options) -> bytes:
    fs, path = resolve(uri, **s3_options)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no such file: {uri}") from e


def write_bytes_atomic(uri: str, data: bytes | bytearray | memoryview, **s3_options) -> None:
    """Write ``data`` so readers see either the old file or the whole new one, never a partial file.

    Local: write a hidden temp file in the same directory (same filesystem, so the rename is atomic),
    fsync, then ``os.replace``. S3: an object only becomes visible when its PUT (or multipart upload)
    completes, so a plain write is already atomic.
    """
    fs, path = resolve(uri, **s3_options)
    if isinstance(fs, pafs.LocalFileSystem):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            # Never leave the temp file behind, whatever went wrong (including KeyboardInterrupt).
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def exists(uri: str, **s3_options) -> bool:
    fs, path = resolve(uri, **s3_options)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(uri: str, suffixes: str | tuple[str, ...] | list[str] | None = None, hidden: bool = False, **s3_options) -> list[str]:
    """All files under ``uri`` (recursively), sorted, as URIs of the same kind as ``uri``.

    ``suffixes`` filters by name ending (case-insensitive), e.g. ``(".parquet",)``. Hidden or
    private names (leading '.' or '_', e.g. temp files of an in-flight atomic write, _SUCCESS)
    are skipped unless ``hidden``. A ``uri`` that is itself a file is returned alone if it matches.
    """
    fs, path = resolve(uri, **s3_options)
    if isinstance(suffixes, str):
        suffixes = (suffixes,)
    wanted = tuple(s.lower() for s in suffixes) if suffixes else None

    def keep(p: str) -> bool:
        name = posixpath.basename(p)
        if name.startswith((".", "_")) and not hidden:
            return False
        return wanted is None or name.lower().endswith(wanted)

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"nothing at {uri}")
    if info.type == pafs.FileType.File:
        return [uri] if keep(path) else []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    found = sorted(i.path for i in infos if i.type == pafs.FileType.File and keep(i.path))
    return [_to_uri(uri, p) for p in found]


def delete_file(uri: str, **s3_options) -> None:
    fs, path = resolve(uri, **s3_options)
    fs.delete_file(path)
