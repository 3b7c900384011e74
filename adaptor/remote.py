"""Folders on object storage (``s3://bucket/key``, or any other fsspec URI): a local working
copy that every write reaches the remote through.

:func:`working_copy` turns a location into a local folder: a local path as it is; a URI
(after checking that the storage answers and, for an output, takes a write) into its working
copy under the cache (``$ADAPTOR_CACHE``, default ``~/.cache/adaptor/remote``, then
``<protocol>/<bucket>/<key>``), made equal to the remote folder first: files missing or
changed here are pulled, files the remote lacks are dropped. The remote is the truth, so a
rerun on any machine resumes from what reached it.

Every file published under a working copy (:func:`adaptor.atomic.atomic_open` and the few
other renames into place) is uploaded at once, from any process on the machine: to
``NAME.<pid>.partial``, then moved to ``NAME``, so no object is ever half-written under its
final name. The remote location of a file follows from where it lies in the cache, so Ray
workers on this machine need nothing handed to them; workers on other machines open the
same URI (:func:`uri_of`) and get their own working copy.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import split_protocol, url_to_fs

from adaptor.errors import AdaptorError

CACHE_ENV = "ADAPTOR_CACHE"
DEFAULT_CACHE = Path("~/.cache/adaptor/remote")
TMP_SUFFIX = ".partial"  # as adaptor.atomic's: temporary names, never pulled or pushed
_LOCK_NAME = ".lock"
_LOCAL = (None, "file", "local")  # protocols of this machine's own files
_NO_LISTINGS_CACHE = {"use_listings_cache": False}  # other processes change the remote
# where fsspec backends put a file's modification time in their listings
_MTIME_KEYS = ("LastModified", "mtime", "last_modified", "updated", "created")


class StorageError(AdaptorError, RuntimeError):
    """Object storage that cannot be used: no such bucket, writes refused, no credentials."""


def cache_root() -> Path:
    """The folder that holds every working copy."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser().resolve()


def working_copy(location: str | Path, *, writable: bool = True) -> Path:
    """The local folder for ``location``: a local path as it is; for a URI, its working copy,
    made equal to the remote folder (``writable``: after proving a write there).

    Raises :class:`StorageError` naming the URI when the bucket does not exist, writes are
    refused or no credentials are found: before any work.
    """
    uri = str(location)
    protocol, path = split_protocol(uri)
    if protocol in _LOCAL:
        return Path(path)
    fs, root = url_to_fs(uri, **_NO_LISTINGS_CACHE)
    root = root.rstrip("/")
    local = cache_root() / protocol / root.lstrip("/")
    try:
        if writable:
            probe = f"{root}/.write-test.{os.getpid()}{TMP_SUFFIX}"
            fs.pipe_file(probe, b"")
            fs.rm_file(probe)
        with _locked(exclusive=True):
            pulled = _pull(fs, root, local)
    except Exception as err:  # the backend's own errors: botocore's, aiohttp's, OSError
        raise _storage_error(uri, err, writable) from err
    if not writable and not pulled:
        raise StorageError(f"{uri}: no files there")
    local.mkdir(parents=True, exist_ok=True)
    return local


def uri_of(path: Path) -> str:
    """The URI of a path inside a working copy; any other path as it is."""
    found = _remote_of(path)
    if found is None:
        return str(path)
    fs, key = found
    return fs.unstrip_protocol(key)


def ray_storage(path: Path) -> dict[str, Any]:
    """``storage_path`` (and ``storage_filesystem``) for Ray Train's ``RunConfig`` to keep
    its checkpoints at ``path``: on the remote itself when ``path`` lies in a working copy."""
    found = _remote_of(path)
    if found is None:
        return {"storage_path": str(path)}
    import pyarrow.fs

    fs, key = found
    handler = pyarrow.fs.FSSpecHandler(fs)
    return {"storage_path": key, "storage_filesystem": pyarrow.fs.PyFileSystem(handler)}


@contextmanager
def publishing(path: Path) -> Iterator[None]:
    """Around the rename that puts the file ``path`` in place: in a working copy, upload it
    right after (no other process refreshes the copy in between)."""
    found = _remote_of(path)
    if found is None:
        yield
        return
    fs, key = found
    with _locked(exclusive=False):
        yield
        try:
            _push(fs, [Path(path)], [key])
        except Exception as err:  # the backend's own errors, as in working_copy
            raise _storage_error(fs.unstrip_protocol(key), err, writable=True) from err


def publish_tree(folder: Path) -> None:
    """Upload every file under ``folder`` (in a working copy) that the remote lacks or holds
    in another version: for files written without :func:`publishing`, such as images."""
    found = _remote_of(folder)
    if found is None:
        return
    fs, root = found
    remote = _listing(fs, root)
    files = [
        p
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file() and not p.name.endswith(TMP_SUFFIX)
    ]
    changed = [p for p in files if not _same(p, remote.get(p.relative_to(folder).as_posix()))]
    with _locked(exclusive=False):
        _push(fs, changed, [f"{root}/{p.relative_to(folder).as_posix()}" for p in changed])


def remove(path: Path) -> None:
    """Delete the file ``path``, and its remote copy when it lies in a working copy."""
    Path(path).unlink(missing_ok=True)
    found = _remote_of(path)
    if found is not None:
        fs, key = found
        if fs.exists(key):
            fs.rm_file(key)


def remove_partials(folder: Path) -> None:
    """Delete the remote leftovers of uploads cut short (``*.partial``) in ``folder``."""
    found = _remote_of(folder)
    if found is not None:
        fs, root = found
        stale = [p for p in fs.find(root, maxdepth=1) if p.endswith(TMP_SUFFIX)]
        if stale:
            fs.rm(stale)


# ---------------------------------------------------------------- internals


def _remote_of(path: Path) -> tuple[fsspec.AbstractFileSystem, str] | None:
    """The filesystem and key of a path inside a working copy; None for any other path."""
    try:
        parts = Path(path).resolve().relative_to(cache_root()).parts
    except ValueError:
        return None
    if len(parts) < 2:
        return None
    return fsspec.filesystem(parts[0], **_NO_LISTINGS_CACHE), "/".join(parts[1:])


@contextmanager
def _locked(*, exclusive: bool) -> Iterator[None]:
    """Refreshing a working copy (exclusive) never runs while a file is being published."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / _LOCK_NAME, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _listing(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict[str, Any]]:
    """Every finished file under ``root`` by its path relative to it."""
    found = fs.find(root, detail=True)
    return {
        name[len(root) :].lstrip("/"): info
        for name, info in found.items()
        if info.get("type") == "file" and not name.endswith(TMP_SUFFIX)
    }


def _mtime(info: dict[str, Any]) -> float | None:
    value = next((info[k] for k in _MTIME_KEYS if info.get(k) is not None), None)
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.timestamp() if isinstance(value, datetime) else value


def _same(local: Path, info: dict[str, Any] | None) -> bool:
    """Whether the local file is the version ``info`` describes (size and modification time)."""
    if info is None or not local.is_file():
        return False
    stat, mtime = local.stat(), _mtime(info)
    return stat.st_size == info["size"] and (mtime is None or abs(stat.st_mtime - mtime) < 1e-3)


def _pull(fs: fsspec.AbstractFileSystem, root: str, local: Path) -> int:
    """Make ``local`` equal to the remote folder ``root``: fetch what differs, drop the rest;
    return how many files the remote holds."""
    remote = _listing(fs, root)
    if local.is_dir():
        for path in local.rglob("*"):
            name = path.relative_to(local).as_posix()
            if path.is_file() and not name.endswith(TMP_SUFFIX) and name not in remote:
                path.unlink()
    todo = [name for name, info in remote.items() if not _same(local / name, info)]
    tmps = [local / f"{name}.{os.getpid()}{TMP_SUFFIX}" for name in todo]
    for tmp in tmps:
        tmp.parent.mkdir(parents=True, exist_ok=True)
    if todo:
        fs.get([f"{root}/{name}" for name in todo], [str(t) for t in tmps])
    for name, tmp in zip(todo, tmps, strict=True):
        mtime = _mtime(remote[name])
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        os.replace(tmp, local / name)
    return len(remote)


def _push(fs: fsspec.AbstractFileSystem, files: list[Path], keys: list[str]) -> None:
    """Upload ``files`` to ``keys`` through temporary keys, then stamp each local file with
    its remote modification time, so a later refresh knows they are the same."""
    if not files:
        return
    tmps = [f"{key}.{os.getpid()}{TMP_SUFFIX}" for key in keys]
    fs.put([str(f) for f in files], tmps)
    fs.mv(tmps, keys)
    if len(keys) == 1:
        infos = {keys[0]: fs.info(keys[0])}
    else:  # one listing, not one request per file
        infos = fs.find(os.path.commonpath(keys), detail=True)
    for path, key in zip(files, keys, strict=True):
        mtime = _mtime(infos[key])
        if mtime is not None:
            os.utime(path, (mtime, mtime))


def _storage_error(uri: str, err: Exception, writable: bool) -> StorageError:
    """One message naming the URI and what is wrong with it."""
    what = f"{type(err).__name__}: {err}"
    if type(err).__name__ == "NoCredentialsError":
        hint = (
            "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE, or run where an instance role applies)"
        )
    elif isinstance(err, FileNotFoundError):
        hint = f"the bucket does not exist ({what})"
    elif isinstance(err, PermissionError):
        action = "writing there" if writable else "reading there"
        hint = f"{action} is refused ({what}): check the credentials' permissions and the bucket policy"
    else:
        hint = f"the storage cannot be used ({what})"
    return StorageError(f"{uri}: {hint}")
