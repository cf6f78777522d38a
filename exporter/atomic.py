"""Atomic directory and file writes: build beside the target, then rename into place.

An interrupted write leaves nothing at the target path; ``--force`` replaces an
existing target only after the new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import OutputExistsError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(path: Path, force: bool) -> None:
    """Refuse an existing output unless ``force``."""
    if path.exists() and not force:
        raise OutputExistsError(f"output {path} already exists; pass --force to replace it, or choose another path")


@contextlib.contextmanager
def atomic_directory(target: Path, force: bool = False,
                     keep_existing: Callable[[], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; rename it to ``target`` on success.

    ``keep_existing`` is asked when ``target`` appeared while we were building (a concurrent
    writer finished first): if it says the existing one is good, ours is discarded instead of
    swapped in, so readers of the existing directory never see it vanish.
    """
    target = Path(target)
    check_output(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp makes 0700; the result should look like any new directory
    try:
        yield tmp
        if not target.exists():
            try:
                os.rename(tmp, target)      # atomic; fails if someone else created target meanwhile
                return
            except OSError:
                if not target.exists():
                    raise
        if keep_existing is not None and keep_existing():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if target.exists():
            # Move the old one aside first so a crash between the two renames
            # still leaves one complete directory on disk.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, old / "x")
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, force: bool = True) -> None:
    """Write a file via a temporary sibling and ``os.replace``."""
    path = Path(path)
    check_output(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
