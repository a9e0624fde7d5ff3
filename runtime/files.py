"""Local files written whole: a reader (or the file's next user) sees the old file or the new one, never a part.

The writing goes to a hidden file beside the target, renamed over it at the end (with the permissions of the file
it replaces) and deleted if the writing stops (Ctrl-C, a full disk, a bad record), so a stopped write leaves the
earlier file of that name as it was. A symbolic link to a file gets the same, beside that file (the link stays),
when a rename keeps the file what others see (``replaceable_file``); a device, a pipe (``/dev/stdout``, itself a
link), a link to nothing yet or to a file a rename would change for others is written in place.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

Written = TypeVar("Written")

_MAX_LINK_HOPS: Final = 40  # as the kernel's own limit on a chain of links


def write_whole(target: Path, write: Callable[[Path], Written]) -> Written:
    """``write(path)`` into a hidden file beside ``target``'s file, renamed over it once done (``write(target)``
    itself where the target is written in place); returns what ``write`` returned."""
    file = replaceable_file(target)
    if file is None:
        return write(target)
    partial = file.with_name(f".{file.name}.partial")
    try:
        written = write(partial)
        if file.exists():
            shutil.copymode(file, partial)
        os.replace(partial, file)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return written


def replaceable_file(target: Path) -> Path | None:
    """The file a write replaces whole by a rename: the file named (existing or not), or the regular file a link
    leads to if it is ours, has no other name (a hard link would keep the old contents) and sits in a folder we
    may write to; None where the target is written in place."""
    if not target.is_symlink():
        return None if target.exists() and not target.is_file() else target
    file = _linked_file(target)
    if file is None:
        return None
    held = file.stat()
    if held.st_uid != os.getuid() or held.st_nlink != 1 or not os.access(file.parent, os.W_OK | os.X_OK):
        return None
    return file


def _linked_file(link: Path) -> Path | None:
    """The regular file a symbolic link leads to; None for a link to nothing yet, to a device or through a
    process's descriptors (``/dev/stdout`` -> ``/proc/self/fd/1``: the file behind it is held open by another
    process, the shell that redirected it, which a rename would leave writing to a file no longer named)."""
    path, hops = link, 0
    while path.is_symlink() and hops < _MAX_LINK_HOPS:
        if _is_system_path(path):
            return None
        path, hops = path.parent / os.readlink(path), hops + 1
    if path.is_symlink() or _is_system_path(path) or not path.is_file():
        return None
    return Path(os.path.realpath(path))


def _is_system_path(path: Path) -> bool:
    """Under /dev or /proc, ``..`` resolved (a relative link ``../../proc/self/fd/1`` too)."""
    absolute = Path(os.path.abspath(path))
    return absolute.is_relative_to("/dev") or absolute.is_relative_to("/proc")
