"""The one place that writes and deletes files, and the rule every writer goes through.

taylorcli writes a file only inside a folder it owns (a folder holding one of its markers:
run.json, paper.json, report.json), or as a new file, or over a file that is recognisably its
own output (single-file outputs carry a signature). It writes regular files only, atomically
(a temporary file in the same folder, then a rename), never through a symbolic link below an
owned folder, and never replaces a device, a pipe or a link. It deletes only inside folders it
owns, never through a link (a link itself is left where the user put it). Locks live here too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
from pathlib import Path

from .errors import OwnershipError

MAX_NAME = 255  # bytes in one file name on every filesystem taylorcli meets
MARKERS = ("run.json", "paper.json", "report.json")  # runs and sweeps, paper folders, reports


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _file_mode() -> int:
    # mkstemp creates 0600 files; results on shared cluster storage read like any other file.
    return 0o666 & ~_umask()


def safe_name(text: str, suffix: str = "") -> str:
    """A file name made from `text` (a run name, a setting) that fits one name on any filesystem."""
    name = "".join(c if c.isprintable() and c not in "/\\\0" else "_" for c in str(text))
    name = name.strip(" .") or "_"
    limit = MAX_NAME - len(suffix.encode()) - 20
    if len(name.encode()) > limit:
        tag = hashlib.sha256(name.encode()).hexdigest()[:12]
        cut = name.encode()[: limit - 13].decode(errors="ignore")
        name = f"{cut}-{tag}"
    return name + suffix


def _lstat(path: Path):
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # missing, or under a file
        return None


def _is_link(path: Path) -> bool:
    st = _lstat(path)
    return st is not None and stat.S_ISLNK(st.st_mode)


def _replace_atomically(path: Path, data: bytes) -> None:
    """Temp file + fsync + rename: readers see the old content or the new, never a part."""
    # The temporary name is short and fixed in shape: a long target name must not overflow.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".taylorcli-", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_replaceable(path: Path, what: str = "") -> None:
    """Refuse a target that is not a regular file (a link, a device, a folder, a pipe)."""
    st = _lstat(path)
    if st is None or stat.S_ISREG(st.st_mode):
        return
    kind = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a folder" if stat.S_ISDIR(
        st.st_mode) else "a device or special file")
    raise OwnershipError(f"{what or path}: is {kind}; taylorcli writes only regular files it "
                         f"owns, so choose another path")


def _real_folders(root: Path, relative: Path) -> None:
    """Create the folders between `root` and a file, refusing any that is a link or a file."""
    here = root
    for part in relative.parts[:-1]:
        here = here / part
        st = _lstat(here)
        if st is None:
            here.mkdir()
        elif stat.S_ISLNK(st.st_mode):
            raise OwnershipError(f"{here}: is a symbolic link inside a taylorcli folder; "
                                 f"taylorcli writes through no links, so remove the link "
                                 f"(or point --out at the real folder)")
        elif not stat.S_ISDIR(st.st_mode):
            raise OwnershipError(f"{here}: is a file where taylorcli keeps a folder; move it "
                                 f"away or choose another --out")


class OwnedFolder:
    """A folder taylorcli made, known by its marker file; every write and delete inside goes here."""

    def __init__(self, path: str | Path, marker: str = "run.json"):
        self.path = Path(path)
        self.marker = marker

    @property
    def marker_path(self) -> Path:
        """The marker file that proves taylorcli made this folder."""
        return self.path / self.marker

    def is_owned(self) -> bool:
        """Whether the marker is there (a regular file, not a link)."""
        st = _lstat(self.marker_path)
        return st is not None and stat.S_ISREG(st.st_mode)

    def read_marker(self) -> dict:
        """The marker's JSON ({} when missing or unreadable)."""
        if not self.is_owned():
            return {}
        try:
            info = json.loads(self.marker_path.read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def is_new(self) -> bool:
        """A missing folder, or an empty one (hidden entries aside: a lock, a temp file)."""
        if _lstat(self.path) is None:
            return True
        return self.path.is_dir() and not any(not e.name.startswith(".")
                                              for e in self.path.iterdir())

    def refusal(self, what: str, flag: str = "--out") -> OwnershipError:
        """The one line for a folder that is neither new nor taylorcli's."""
        p = self.path
        if p.exists() and not p.is_dir():
            return OwnershipError(f"{flag} {p}: is a file, not a folder; choose a new folder")
        entries = sorted(e.name for e in p.iterdir() if not e.name.startswith("."))
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        return OwnershipError(f"{flag} {p}: exists and is not {what} (no {self.marker}; it holds "
                              f"{shown}); taylorcli writes only into a new or empty folder or "
                              f"one of its own, so choose another {flag}")

    def claim(self, info: dict, what: str, flag: str = "--out") -> None:
        """Make a new or empty folder ours (write its marker); an owned one is left as it is."""
        if self.is_owned():
            return
        if not self.is_new():
            raise self.refusal(what, flag)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OwnershipError(f"{flag} {self.path}: cannot create it ({e.strerror or e})"
                                 ) from None
        self.write_marker(info)

    def write_marker(self, info: dict) -> None:
        """Write (or rewrite) the marker itself."""
        self._write(Path(self.marker), (json.dumps(info, indent=1) + "\n").encode())

    def check_writable(self, flag: str = "--out") -> None:
        """Say in one line why the folder cannot be written, before any work starts."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.path, prefix=".taylorcli-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise OwnershipError(f"{flag} {self.path}: cannot write there ({e.strerror or e})"
                                 ) from None

    def check_no_links(self, names) -> None:
        """Refuse a folder whose own subfolders (checkpoints, logits, ...) are symbolic links."""
        for name in names:
            if _is_link(self.path / name):
                raise OwnershipError(f"{self.path / name}: is a symbolic link; taylorcli writes "
                                     f"and deletes only inside its own folder and follows no "
                                     f"links there, so remove the link (to keep results "
                                     f"elsewhere, make --out itself live there)")

    def write(self, relative: str | Path, data: bytes) -> Path:
        """Write a file inside this folder, atomically; its path. The folder must be ours, or
        new when the file is its marker."""
        relative = Path(relative)
        if not self.is_owned() and not (relative == Path(self.marker) and self.is_new()):
            raise OwnershipError(f"{self.path}: not a taylorcli folder (no {self.marker}); "
                                 f"nothing written")
        return self._write(relative, data)

    def _write(self, relative: Path, data: bytes) -> Path:
        if relative.is_absolute() or ".." in relative.parts:
            raise OwnershipError(f"{relative}: expected a path inside {self.path}")
        _real_folders(self.path, relative)
        path = self.path / relative
        check_replaceable(path)
        _replace_atomically(path, data)
        return path

    def append_line(self, relative: str | Path, line: str) -> None:
        """Append one line to a log inside this folder (the file is ours or new)."""
        relative = Path(relative)
        if not self.is_owned():
            raise OwnershipError(f"{self.path}: not a taylorcli folder (no {self.marker})")
        _real_folders(self.path, relative)
        path = self.path / relative
        check_replaceable(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, _file_mode())
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")

    def remove(self, relative: str | Path) -> None:
        """Delete a file of ours inside this folder; a link is left alone, never followed."""
        path = self._inside(relative)
        st = _lstat(path)
        if st is not None and stat.S_ISREG(st.st_mode):
            path.unlink()

    def remove_tree(self, relative: str | Path) -> None:
        """Delete a folder of ours inside this folder; a link is left alone, never followed."""
        path = self._inside(relative)
        st = _lstat(path)
        if st is not None and stat.S_ISDIR(st.st_mode):
            # shutil.rmtree never follows links inside the tree (it unlinks them).
            shutil.rmtree(path)

    def remove_empty(self, relative: str | Path) -> None:
        """Delete a folder of ours if it is empty (it may hold something of the user's)."""
        path = self._inside(relative)
        st = _lstat(path)
        if st is not None and stat.S_ISDIR(st.st_mode):
            with contextlib.suppress(OSError):
                path.rmdir()

    def _inside(self, relative: str | Path) -> Path:
        relative = Path(relative)
        if not self.is_owned() or relative.is_absolute() or ".." in relative.parts:
            raise OwnershipError(f"{self.path / relative}: not inside a taylorcli folder; "
                                 f"nothing deleted")
        here = self.path
        for part in relative.parts[:-1]:
            here = here / part
            if _is_link(here):
                raise OwnershipError(f"{here}: is a symbolic link; nothing deleted through it")
        return self.path / relative


def owner_of(path: str | Path) -> OwnedFolder | None:
    """The nearest folder at or above `path`'s folder that taylorcli owns (holds a marker)."""
    here = Path(path).absolute().parent
    for folder in (here, *here.parents):
        for marker in MARKERS:
            owned = OwnedFolder(folder, marker)
            if owned.is_owned():
                return owned
    return None


def write_owned(path: str | Path, data: bytes) -> Path:
    """Write `path` through the folder that owns it (the one rule), or refuse in one line."""
    path = Path(path)
    owner = owner_of(path)
    if owner is None:
        raise OwnershipError(f"{path.parent}: not inside a folder taylorcli made (no "
                             f"{', '.join(MARKERS)} above it); nothing written")
    owner.write(path.absolute().relative_to(owner.path.absolute()), data)
    return path


def write_output_file(path: str | Path, data: bytes, signature: bytes, flag: str = "--out") -> Path:
    """A single-file output (compare --out FILE): new, or replacing a file that starts with our
    `signature` (one taylorcli wrote); never a device, a link or a file of the user's."""
    path = Path(path)
    st = _lstat(path)
    if st is not None:
        check_replaceable(path, f"{flag} {path}")
        with open(path, "rb") as f:
            head = f.read(len(signature))
        if head != signature:
            raise OwnershipError(f"{flag} {path}: exists and was not written by taylorcli; "
                                 f"choose a new file name (taylorcli replaces only its own "
                                 f"outputs)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _replace_atomically(path, data)
    except OSError as e:
        raise OwnershipError(f"{flag} {path}: cannot write ({e.strerror or e})") from None
    return path


class FolderLock:
    """An exclusive lock on a folder (FOLDER/.lock), held by a live process and released by the
    kernel when it dies (flock, not a pid file: a SIGKILL cannot leave it stuck)."""

    def __init__(self, path: str | Path, what: str = "run"):
        self.path = Path(path) / ".lock"
        self.what = what
        self.fd: int | None = None

    def acquire(self, flag: str = "--out") -> None:
        """Take the lock, or say in one line which live process holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise OwnershipError(f"{self.path}: cannot open the lock file ({e.strerror or e})"
                                 ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                # Some cluster filesystems (Lustre without -o flock) cannot lock at all.
                print(f"taylorcli: warning: {self.path}: this filesystem cannot lock files "
                      f"({e.strerror}); nothing stops a second process on the same {flag}",
                      file=sys.stderr)
                self.fd = fd
                return
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OwnershipError(f"{flag} {self.path.parent}: in use by a live {self.what} "
                                 f"({holder}); wait for it to end or choose another {flag}"
                                 ) from None
        with contextlib.suppress(OSError):  # who holds it is a courtesy, not a requirement
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self.fd = fd

    def release(self) -> None:
        """Let the next process in."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
