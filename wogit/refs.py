"""Moving one ref as git does, without starting a git process: lock, check, write, sync, rename.

git, libgit2 and this module all take ``<ref>.lock`` (created exclusively) before they
change a loose ref, so a change made here and one made by ``git update-ref``, a push or
``git pack-refs`` never interleave.  The ref's value is checked while the lock is held, so
"create if absent" and compare-and-swap are exact across threads and processes.  The new
value is fsync'd before the rename and the directory after it: once ``update`` returns, the
change survives a crash.  (libgit2 would sync too, but holding the GIL: every other request
of the process would wait for the disk; ``git update-ref`` costs a process per write.)
"""

from __future__ import annotations

import os
from collections.abc import Callable

from wogit.objects import fsync_dir

ZERO = "0" * 40


class Locked(Exception):
    """Another writer holds the ref's lock (or removed its directory meanwhile): try again."""


class Moved(Exception):
    """The ref is not at the value the change expects."""

    def __init__(self, name: str, found: str | None):
        super().__init__(f"{name} is at {found or 'nothing'}")
        self.found = found


def update(git_dir: str, name: str, new: str, old: str, current: Callable[[], str | None],
           fsync: bool = True) -> None:
    """Point ``name`` at ``new`` if it is at ``old`` now (``ZERO``: if it does not exist).

    ``current()`` reads the ref's value (loose or packed, None if absent); it is called
    with the lock held.  Raises ``Locked`` or ``Moved``; on any failure nothing changed.
    """
    path = os.path.join(git_dir, name)
    lock = path + ".lock"
    _make_dirs(git_dir, os.path.dirname(path), fsync)
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except (FileExistsError, FileNotFoundError):  # locked; or git pruned the empty directory
        raise Locked(name) from None
    try:
        try:
            found = current()
            if (found or ZERO) != old:
                raise Moved(name, found)
            os.write(fd, new.encode("ascii") + b"\n")
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(lock, path)
    except BaseException:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        raise
    if fsync:
        fsync_dir(os.path.dirname(path))


def _make_dirs(git_dir: str, directory: str, fsync: bool) -> None:
    """Create ``directory`` and any missing parents, each synced into its parent."""
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(directory)
    if parent != directory and os.path.normpath(parent) != os.path.normpath(git_dir):
        _make_dirs(git_dir, parent, fsync)
    try:
        os.mkdir(directory)
    except FileExistsError:
        return
    if fsync:
        fsync_dir(parent)
