"""The watched folder: a shared folder or a USB stick's mount point where images are dropped.

A file is taken once it is complete (its size and time unchanged for `stable_s`), handed to ingest, then moved to
`done/` (kept by the appliance) or `failed/` with `<name>.reason.txt` beside it. Nothing is deleted unread; a
file that cannot be read yet (a stick pulled out mid-copy) is tried again at the next look. Polling, not inotify:
USB sticks are FAT, and network folders do not report changes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from edge_app.background import Background
from edge_app.config import FolderCaptureSettings
from edge_app.ingest import Ingest

log = logging.getLogger(__name__)
DONE, FAILED = "done", "failed"


class FolderWatcher:
    """Looks at the folder every `poll_s` seconds while started."""

    name = "folder"

    def __init__(self, settings: FolderCaptureSettings, ingest: Ingest) -> None:
        assert settings.path is not None
        self.root = settings.path
        self.settings = settings
        self.ingest = ingest
        self._seen: dict[Path, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, since)
        self._received = 0
        self._loop_thread = Background("edge-folder", self._loop)
        self.stop = self._loop_thread.stop

    def start(self) -> None:
        self._loop_thread.start()
        log.info("watching %s for images", self.root)

    def state(self) -> dict[str, object]:
        return {
            "name": self.name,
            "connected": self.root.is_dir(),
            "detail": str(self.root),
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
        if not self.root.is_dir():
            return 0
        present, taken = set(), 0
        for path in self._files():
            try:
                st = path.stat()
            except OSError:
                continue
            present.add(path)
            size, mtime, since = self._seen.get(path, (-1, -1, now))
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                self._seen[path] = (st.st_size, st.st_mtime_ns, now)
            elif now - since >= self.settings.stable_s and self._take(path):
                present.discard(path)
                taken += 1
        self._seen = {p: v for p, v in self._seen.items() if p in present}
        return taken

    def _files(self) -> list[Path]:
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            if here == self.root:
                dirnames[:] = [d for d in dirnames if d not in (DONE, FAILED)]
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found += [here / f for f in sorted(filenames) if not f.startswith(".") and not f.endswith(".reason.txt")]
        return found

    def _take(self, path: Path) -> bool:
        relative = path.relative_to(self.root)
        try:
            with path.open("rb") as fh:
                added = self.ingest.submit(fh, relative.as_posix(), f"folder:{self.root}")
        except OSError as exc:  # unreadable for now: leave it, try at the next look
            # No file name in the log: it may name a patient (the reason file beside it says which).
            log.warning("a file in %s cannot be read yet: %s", self.root, exc.strerror or type(exc).__name__)
            return False
        if added is None:
            self._move(path, relative, FAILED, "the file is empty")
        elif added.status == "rejected" and not added.duplicate:
            self._move(path, relative, FAILED, added.reason or "refused")
        else:
            self._move(path, relative, DONE, None)
            self._received += 1
        return True

    def _move(self, path: Path, relative: Path, folder: str, reason: str | None) -> None:
        target = self.root / folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while target.exists():
            target = target.with_name(f"{relative.stem}-{n}{relative.suffix}")
            n += 1
        shutil.move(path, target)
        if reason is not None:
            target.with_name(target.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")
            log.info("a file in %s refused (see failed/): %s", self.root, reason)
