"""URLs → fsspec filesystems (plain path, ``file://``, ``s3://``, ``gs://``) and atomic shard writes."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import fsspec

from mimlab.data.schema import SHARD_SUFFIX
from mimlab.errors import UserError

# Packages that provide remote filesystems, named in the error when missing.
_PACKAGES = {"s3": "s3fs (pip install 'mimlab[s3]')", "s3a": "s3fs (pip install 'mimlab[s3]')",
             "gs": "gcsfs (pip install 'mimlab[gcs]')", "gcs": "gcsfs (pip install 'mimlab[gcs]')",
             "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs", "hf": "huggingface_hub"}


def resolve(url: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """Split a URL into an fsspec filesystem and a path on it.

    A plain path (relative or absolute) and ``file://`` map to the local filesystem with an absolute path.

    Raises:
        UserError: for an unknown scheme or one whose package is not installed (naming the package).
    """
    text = os.fspath(url)
    if "://" not in text:
        from mimlab.urls import check_not_a_broken_url

        check_not_a_broken_url(text, "data URL")
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(text))
    scheme = text.split("://", 1)[0].lower()
    if scheme == "file":
        return fsspec.filesystem("file"), os.path.abspath(text[len("file://"):])
    try:
        cls = fsspec.get_filesystem_class(scheme)
    except ValueError:
        raise UserError(f"unknown URL scheme '{scheme}://' in '{text}'; use a path, file://, s3:// or gs://") from None
    except ImportError:
        package = _PACKAGES.get(scheme, f"the fsspec backend for '{scheme}'")
        raise UserError(f"URL '{text}' needs {package}, which is not installed") from None
    if scheme in ("s3", "s3a"):
        # A fresh instance per call (no fsspec instance cache): the endpoint and keys are read from the environment
        # now, not from whichever instance an earlier call cached. The endpoint travels with the pickled filesystem.
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        fs = _s3_class()(skip_instance_cache=True, **({"endpoint_url": endpoint} if endpoint else {}),
                         config_kwargs={"connect_timeout": S3_CONNECT_TIMEOUT,
                                        "retries": {"max_attempts": S3_ATTEMPTS, "mode": "standard"}})
        path = fs._strip_protocol(text)
        _check_bucket(fs, path, text)
        return fs, path
    fs = cls()
    return fs, fs._strip_protocol(text)


# Bounded S3 retries: botocore's attempts per request x s3fs's retries of retryable errors. An unreachable endpoint
# answers in seconds (2.7 s to a closed port here) instead of minutes (53 s with the library defaults).
S3_CONNECT_TIMEOUT = 5
S3_ATTEMPTS = 3
_S3_RETRIES = 2
_CHECKED: set[tuple] = set()


def _s3_class():
    """``s3fs.S3FileSystem`` with bounded retries, importable by name in Ray workers (see ``__getattr__``)."""
    if "_BoundedS3" not in globals():
        import s3fs

        cls = type("_BoundedS3", (s3fs.S3FileSystem,), {"retries": _S3_RETRIES, "__module__": __name__})
        globals()["_BoundedS3"] = cls
    return globals()["_BoundedS3"]


def __getattr__(name: str):
    if name == "_BoundedS3":  # unpickling an S3 filesystem in a fresh process
        return _s3_class()
    raise AttributeError(name)


def _check_bucket(fs, path: str, url: str) -> None:
    """Probe the bucket once per process, endpoint and credentials, so a wrong endpoint, bucket or key fails at once
    with the URL named (and a write never creates a bucket by accident).

    Raises:
        UserError: unreachable endpoint, missing bucket, or credentials refused.
    """
    from botocore.exceptions import BotoCoreError

    bucket = path.split("/", 1)[0]
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the AWS default endpoint"
    key = (endpoint, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"), bucket)
    if key in _CHECKED:
        return
    try:
        fs.info(bucket)
    except FileNotFoundError:
        raise UserError(f"S3 bucket '{bucket}' of '{url}' does not exist at {endpoint}; create it first") from None
    except PermissionError as err:
        raise UserError(f"access to '{url}' refused at {endpoint} ({err}); check AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from None
    except (BotoCoreError, OSError) as err:
        raise UserError(f"cannot reach the S3 endpoint {endpoint} for '{url}' ({err}); check AWS_ENDPOINT_URL"
                        ) from None
    _CHECKED.add(key)


def locate(url: str | os.PathLike | None) -> tuple[str, fsspec.AbstractFileSystem, str]:
    """Resolve a data URL that must exist; ``None`` means the embedded dataset (generated on first use).

    Returns:
        ``(url text, filesystem, path)``.

    Raises:
        UserError: the path does not exist (or the scheme's package is missing, via :func:`resolve`).
    """
    if url is None:
        from mimlab.data.synth import default_dataset

        url = default_dataset()
    text = os.fspath(url)
    fs, path = resolve(text)
    if not fs.exists(path):
        raise UserError(f"no such file or folder: '{text}'")
    return text, fs, path


def remote_env(fs: fsspec.AbstractFileSystem) -> dict:
    """Ray remote args that hand this process's ``AWS_*`` variables to the tasks reading through ``fs`` (an S3
    filesystem): a Ray runtime started before they were set, or on another node, then still reaches the same endpoint
    with the same credentials. ``{}`` for other filesystems."""
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if not {"s3", "s3a"} & set(protocol):
        return {}
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    return {"runtime_env": {"env_vars": env}} if env else {}


def to_pyarrow(fs: fsspec.AbstractFileSystem) -> Any:
    """Wrap an fsspec filesystem for pyarrow / Ray Data readers."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(fs))


def join(fs: fsspec.AbstractFileSystem, *parts: str) -> str:
    """Join path parts with the filesystem's separator."""
    sep = getattr(fs, "sep", "/")
    return sep.join(p.rstrip(sep) if i < len(parts) - 1 else p for i, p in enumerate(parts))


def list_shards(fs: fsspec.AbstractFileSystem, path: str, url: str) -> list[str]:
    """The shard files at ``path``: the file itself, or the ``*.parquet`` directly in a folder, sorted.

    Raises:
        UserError: when the path is missing or holds no shards.
    """
    if not fs.exists(path):
        raise UserError(f"no such file or folder: '{url}'")
    if not fs.isdir(path):
        return [path]
    files = sorted(p for p in fs.ls(path, detail=False)
                   if p.endswith(SHARD_SUFFIX) and not os.path.basename(p).startswith((".", "_")))
    if not files:
        raise UserError(f"'{url}' holds no {SHARD_SUFFIX} shards (empty dataset)")
    return files


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, write: Any) -> None:
    """Write a file under a temporary name beside ``path``, then rename it; a failure leaves nothing named ``path``.

    Args:
        write: called with the open binary file object.
    """
    parent, name = path.rsplit(getattr(fs, "sep", "/"), 1) if "/" in path else ("", path)
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}" if parent else f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open(tmp, "wb") as handle:
            write(handle)
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def write_json(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    """Write JSON atomically (sorted keys, so the bytes depend only on the content)."""
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    write_atomic(fs, path, lambda handle: handle.write(data))


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    """Read a JSON file, or ``None`` when it does not exist."""
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as handle:
        raw = handle.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise UserError(f"'{path}' is not valid UTF-8 JSON ({err.__class__.__name__}: {str(err)[:80]})") from None
