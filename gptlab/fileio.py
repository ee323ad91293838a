"""Atomic file writes: a reader (a resume, a report, another rank) sees the old file or the new one,
never half of one, and a crash leaves no partial file under the real name."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``path`` (fsynced first) only when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # a leftover (or a planted link): "x" creates anew, never writes through a link
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None or (e.filename == str(tmp) and e.filename2 is None):  # a write's error names no
            # file, an open's the hidden temporary: name the file being written (a rename's names both, kept)
            e.filename = str(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)  # make the rename itself durable


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename in it) to disk; a no-op where directories cannot be opened."""
    try:
        dir_fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


RUN_LOCK = ".gptlab.lock"


@contextlib.contextmanager
def run_lock(out_dir: str | Path) -> Iterator[None]:
    """One training at a time in ``out_dir``: a job submitted twice (or a requeue racing the job it
    replaces) would interleave its log with the other's, overwrite its checkpoint, or with overwrite=True
    delete it. An exclusive ``flock`` held for the whole run; a second run is refused in one line naming
    the holder. The lock goes with the process, also when it is killed."""
    out_dir = Path(os.path.abspath(out_dir))  # '..' resolved, so that each folder made below can be removed
    created = [d for d in (out_dir, *out_dir.parents) if not d.exists()]  # removed again if nothing is written
    try:
        import fcntl
    except ImportError:  # no flock (Windows): not guarded
        yield
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if (out_dir / RUN_LOCK).is_symlink():  # a downloaded run folder's: writing would follow it out of out_dir
            (out_dir / RUN_LOCK).unlink()
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        # unbuffered: a full disk fails the holder's note here (it is only a note), never the close
        lock = open(os.open(out_dir / RUN_LOCK, flags, 0o644), "r+b", buffering=0)  # noqa: SIM115 (held to the end)
    except OSError:  # a read-only out_dir: the run's own first write says so
        yield
        return
    locked = owner = False  # owner: ours to clean up (never another live run's lock file)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = owner = True
        except BlockingIOError:
            raise _in_use(out_dir, lock) from None
        except OSError as e:  # a filesystem without flock (Lustre mounted noflock): train, unguarded
            import sys

            print(f"gptlab: warning: out_dir cannot be locked ({e.strerror or e}): not guarded", file=sys.stderr)
            owner = True
        if locked:
            import socket
            import time

            note = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
            with contextlib.suppress(OSError):  # a full disk: the lock holds all the same; the run's writes say so
                lock.seek(0)
                lock.truncate()
                lock.write(note.encode("utf-8"))
        yield
    finally:
        lock.close()  # releases the lock
        with contextlib.suppress(OSError):
            if owner and {p.name for p in out_dir.iterdir()} <= {RUN_LOCK}:  # nothing of a run written: no trace
                (out_dir / RUN_LOCK).unlink(missing_ok=True)
                for folder in created:  # the folders made for it, innermost first
                    folder.rmdir()


def _in_use(out_dir: Path, lock: IO[bytes]) -> Exception:
    """The one line that refuses a second training, naming the holder the lock file records."""
    from gptlab.errors import ConfigError

    lock.seek(0)
    holder = lock.read().decode("utf-8", "replace").strip() or "another process"
    return ConfigError(
        f"out_dir={str(out_dir)!r} is in use by another training ({holder}): wait for it to end, or pick "
        "another --out_dir"
    )


def refuse_if_in_use(out_dir: str | Path) -> None:
    """The check ``run_lock`` makes, without taking the lock: a resume reads its settings from the latest
    checkpoint before it trains, and a live run's next save prunes that one while it is read (an FSDP
    checkpoint then read as damaged: "not a readable DCP checkpoint", a good one, said of a busy folder)."""
    try:
        import fcntl

        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        lock = open(os.open(Path(out_dir) / RUN_LOCK, flags), "rb", buffering=0)  # noqa: SIM115 (closed below)
    except (ImportError, OSError):  # no flock, no lock file (never trained here), a link: nothing to say
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(Path(os.path.abspath(out_dir)), lock) from None
        except OSError:  # a filesystem without flock: unguarded, as run_lock says when the run starts
            return


def _dangling_link(path: str | os.PathLike[str]) -> str | None:
    """Why a folder cannot be made at ``path`` when it is a symbolic link to nothing; None otherwise."""
    if os.path.islink(path) and not os.path.exists(path):
        target = os.readlink(path)
        return f"{os.fspath(path)!r} is a symbolic link to {target!r}, which is missing: create it, or remove the link"
    return None


def _may_write(folder: Path) -> bool:
    """Whether this process may create entries in ``folder`` (its effective ids, where the OS says them)."""
    effective = os.access in os.supports_effective_ids
    return os.access(folder, os.W_OK | os.X_OK, effective_ids=effective)


def check_directory(key: str, path: str | Path, creates: bool = False) -> None:
    """A folder the user named, that gptlab will create or write into: one ConfigError naming the key when
    it is a file, or when a folder it would be created in is (where mkdir's errno line names neither);
    ``creates``: the caller makes it, so a parent this process may not write to is refused too."""
    from gptlab.errors import ConfigError

    path = Path(path)  # as the callers use it ('~' expanded where the setting was read)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={str(path)!r} is a file: expected a directory (or a path to create one)")
    for folder in (path, *path.parents):  # mkdir's "File exists" named neither the link nor where it points
        if (dangling := _dangling_link(folder)) is not None:
            raise ConfigError(f"{key}={str(path)!r} cannot be created: {dangling}")
        if folder.exists():
            break
    for parent in path.parents:  # the nearest that exists decides
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{key}={str(path)!r} cannot be created: {str(parent)!r} is a file")
            if creates and not path.exists() and not _may_write(parent):  # mkdir's errno line named no key
                raise ConfigError(
                    f"{key}={str(path)!r} cannot be created: permission denied in {str(parent)!r} (pick a folder you "
                    "can write to)"
                )
            return
