"""The watched folder: a shared folder or a USB stick's mount point where images are dropped.

A file is taken once it is complete (its size and time unchanged for `stable_s`), handed to ingest, then moved to
`done/` (kept by the appliance) or `failed/` with `<name>.reason.txt` beside it. Nothing is deleted unread; a
file that cannot be read yet (a stick pulled out mid-copy) is tried again at the next look. Polling, not inotify:
USB sticks are FAT, and network folders do not report changes.

Whoever can write to the stick or the share is not trusted: nothing in the folder is followed. A link (to a file
or a folder), a file with another name elsewhere (a hard link), a pipe or a device is left in place unread and
named on the devices page; while `done/` or `failed/` (or a folder in them) is a link, the files that would go
there are not taken. Every file and folder is opened relative to its checked parent, never by a path that a link
placed since the check could redirect.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import stat
import time
from pathlib import PurePosixPath

from edge_app.config import FolderCaptureSettings
from edge_app.ingest import Ingest
from edge_app.system.background import Background

log = logging.getLogger(__name__)
DONE, FAILED = "done", "failed"
REASON = ".reason.txt"
SHOWN = 5  # problems named on the devices page; the rest are counted
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a pipe put in place of a checked file is opened without waiting for a writer (fstat refuses it).
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# O_EXCL never follows a link, even a dangling one (POSIX): a planted reason file is never written through.
_REASON = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
# Linux says ENOTDIR for a link opened with O_DIRECTORY | O_NOFOLLOW, other systems ELOOP.
_LINKED = (errno.ENOTDIR, errno.ELOOP)


class FolderWatcher:
    """Looks at the folder every `poll_s` seconds while started."""

    name = "folder"

    def __init__(self, settings: FolderCaptureSettings, ingest: Ingest) -> None:
        assert settings.path is not None
        self.root = settings.path
        self.settings = settings
        self.ingest = ingest
        self._seen: dict[PurePosixPath, tuple[int, int, float]] = {}  # relative path -> (size, mtime_ns, since)
        self._received = 0
        self._problems: dict[str, str] = {}  # relative path -> what it is, from the latest look
        self._loop_thread = Background("edge-folder", self._loop)

    def start(self) -> None:
        self._loop_thread.start()
        log.info("watching %s for images", self.root)

    def stop(self) -> None:
        self._loop_thread.stop()

    def state(self) -> dict[str, object]:
        problems = sorted(self._problems.items())
        detail = str(self.root)
        if problems:
            named = ", ".join(f"{name} ({what})" for name, what in problems[:SHOWN])
            more = f" and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
            detail += f"; left in place, not followed: {named}{more}"
        return {
            "name": self.name,
            "connected": self.root.is_dir() and not {DONE, FAILED} & self._problems.keys(),
            "detail": detail,
            "received": self._received,
        }

    def _loop(self) -> None:
        while not self._loop_thread.stopping.is_set():
            try:
                self.scan(time.monotonic())
            except Exception:  # the folder vanished (stick pulled), or a bug: log it, look again later
                log.exception("watched folder %s", self.root)
            self._loop_thread.sleep(self.settings.poll_s)

    def scan(self, now: float) -> int:
        """Take every file that has stayed the same for `stable_s`; return how many were taken."""
        problems: dict[str, str] = {}
        try:
            return self._scan(now, problems)
        finally:
            if problems and problems.keys() != self._problems.keys():
                # No file names in the log: they may name a patient (the devices page shows them).
                log.warning("left in place, not followed in %s: %d (see the devices page)", self.root, len(problems))
            self._problems = problems

    def _scan(self, now: float, problems: dict[str, str]) -> int:
        try:  # the configured folder itself is trusted (it may be a link); nothing below it is
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return 0
        try:
            return self._walk(root_fd, now, problems)
        finally:
            os.close(root_fd)

    def _walk(self, root_fd: int, now: float, problems: dict[str, str]) -> int:
        for folder in (DONE, FAILED):  # a linked one: nothing is taken, the devices page says why
            if not self._usable(root_fd, (folder,), problems):
                return 0
        present, taken = set(), 0
        for dirpath, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=root_fd):
            here = PurePosixPath(dirpath)
            if dirpath == ".":
                dirnames[:] = [d for d in dirnames if d not in (DONE, FAILED)]
            for name in sorted({*dirnames, *filenames}):
                relative = here / name
                if name.startswith(".") or name.endswith(REASON):
                    continue
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    continue
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):  # never opened
                    problems[str(relative)] = "not a regular file"
                    continue
                present.add(relative)
                size, mtime, since = self._seen.get(relative, (-1, -1, now))
                if (st.st_size, st.st_mtime_ns) != (size, mtime):
                    self._seen[relative] = (st.st_size, st.st_mtime_ns, now)
                elif now - since >= self.settings.stable_s and self._take(root_fd, dir_fd, name, relative, problems):
                    present.discard(relative)
                    taken += 1
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        self._seen = {p: v for p, v in self._seen.items() if p in present}
        return taken

    @staticmethod
    def _usable(root_fd: int, parts: tuple[str, ...], problems: dict[str, str]) -> bool:
        """Whether each of the folders `parts` (`done`, `day1`) is a real folder or not there yet."""
        try:
            os.close(_folder(root_fd, parts, create=False))
        except FileNotFoundError:  # created at the move
            pass
        except OSError as exc:
            what = "a link or not a folder" if exc.errno in _LINKED else exc.strerror or type(exc).__name__
            problems[str(exc.filename)] = f"{what}: the files that would go there are not taken"
            return False
        return True

    def _take(self, root_fd: int, dir_fd: int, name: str, relative: PurePosixPath, problems: dict[str, str]) -> bool:
        parts = relative.parent.parts  # checked before reading, so that a file that cannot be moved is not read
        if not all(self._usable(root_fd, (folder, *parts), problems) for folder in (DONE, FAILED)):
            return False
        try:
            fd = os.open(name, _FILE, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                problems[str(relative)] = "a link"
            else:  # unreadable for now: leave it, try at the next look
                # No file name in the log: it may name a patient (the reason file beside it says which).
                log.warning("a file in %s cannot be read yet: %s", self.root, exc.strerror or type(exc).__name__)
            return False
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                problems[str(relative)] = "not a regular file"
                return False
            if st.st_nlink > 1:  # the same file as one elsewhere (the database, the secret key): read as a link
                problems[str(relative)] = "a file with another name: a hard link"
                return False
            try:
                added = self.ingest.submit(fh, relative.as_posix(), f"folder:{self.root}")
            except OSError as exc:
                log.warning("a file in %s cannot be read yet: %s", self.root, exc.strerror or type(exc).__name__)
                return False
        if added is None:
            self._move(root_fd, dir_fd, name, relative, FAILED, "the file is empty")
        elif added.status == "rejected" and not added.duplicate and not added.kept:
            self._move(root_fd, dir_fd, name, relative, FAILED, added.reason or "refused")
        else:
            self._move(root_fd, dir_fd, name, relative, DONE, None)
            self._received += 1
        return True

    def _move(
        self, root_fd: int, dir_fd: int, name: str, relative: PurePosixPath, folder: str, reason: str | None
    ) -> None:
        dest = _folder(root_fd, (folder, *relative.parent.parts), create=True)
        try:
            for n in itertools.count():
                target = name if n == 0 else f"{relative.stem}-{n}{relative.suffix}"
                if _exists(target, dest):
                    continue
                if reason is not None:
                    try:
                        fd = os.open(target + REASON, _REASON, 0o666, dir_fd=dest)
                    except FileExistsError:
                        continue
                    with os.fdopen(fd, "w", encoding="utf-8") as fh:
                        fh.write(reason + "\n")
                # A name taken since the look is replaced, never written through: rename does not follow a link.
                os.rename(name, target, src_dir_fd=dir_fd, dst_dir_fd=dest)
                break
        finally:
            os.close(dest)
        if reason is not None:
            log.info("a file in %s refused (see failed/): %s", self.root, reason)


def _folder(top: int, parts: tuple[str, ...], create: bool) -> int:
    """A descriptor of the folder `parts` below the folder `top`, each of them a real folder; FileNotFoundError
    where one does not exist and `create` is False, another OSError (ENOTDIR, ELOOP) where one is a link. The
    error's `filename` is the path of the one that failed."""
    fd = os.dup(top)
    try:
        for i, part in enumerate(parts):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
            try:
                inner = os.open(part, _DIRECTORY, dir_fd=fd)
            except OSError as exc:
                exc.filename = "/".join(parts[: i + 1])
                raise
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
