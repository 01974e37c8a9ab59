"""Where files live: `<data dir>/files/<job id>/{inputs,results}/`.

Every name that reaches the disk goes through `safe_name`, and every path handed out is
checked to sit inside its own job's directory, so a request can never read or write outside
it. Results are written to a temporary file and renamed into place, so a reader never sees
half a file (and a killed worker leaves no half-written result).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from anyascii import anyascii

from image2model.errors import AppError, is_disk_full

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
PART_PREFIX = ".part-"  # a result being written: .part-<pid>@<host>-<random>
UPLOAD_PREFIX = "upload-"  # an upload being received, in `incoming`: upload-<pid>@<host>-<random>
STALE_PART_SECONDS = 600.0  # a half-written result nobody touched for this long is abandoned
STALE_UPLOAD_SECONDS = 3600.0  # an upload's file, when its writer is on another machine
UNSAFE = re.compile(r"[^A-Za-z0-9._ ()+-]+")


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not JOB_ID.match(job_id):
        raise AppError("job_not_found", "No job with that id.", 404)
    return job_id


STEM_MAX = 96  # leaves room for "NN-" before and "-NN.preview.png" after, within NAME_MAX
NAME_MAX = 120


def safe_name(name: str, fallback: str = "image") -> str:
    """A file name reduced to harmless ASCII, keeping its readable part: other scripts are
    transliterated ("кружка.png" -> "kruzhka.png", "猫.jpg" -> "Mao.jpg"), so a job of photos
    named in Cyrillic or Chinese still tells its models apart; a name with nothing readable
    left takes `fallback`. Long stems are cut so that the prefixes and suffixes we add keep
    every stored name within NAME_MAX."""
    base = os.path.basename(str(name).replace("\\", "/"))
    stem, dot, ext = base.rpartition(".")
    if not dot or len(ext) > 10:  # no extension, or a dot inside the name
        stem, ext = base, ""
    stem, ext = _readable(stem) or fallback, _readable(ext)
    return stem[:STEM_MAX].rstrip(" ._") + (f".{ext}" if ext else "")


def _readable(text: str) -> str:
    return re.sub(r"_+", "_", UNSAFE.sub("_", anyascii(text))).strip(" ._")


def make_unique(names: Iterable[str], variant: Callable[[str, int], str]) -> list[str]:
    """The names in order, each clash (case-insensitive) replaced by variant(name, 2), 3, ..."""
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            candidate = variant(name, n)
        taken.add(candidate.lower())
        unique.append(candidate)
    return unique


def unique_stems(names: Iterable[str]) -> list[str]:
    """Result base names after the originals, with clashes made unique:
    ["shoe.jpg", "shoe.png", "shoe.jpg"] -> ["shoe", "shoe-2", "shoe-3"]."""
    stems = [Path(safe_name(name)).stem or "model" for name in names]
    return make_unique(stems, lambda stem, n: f"{stem}-{n}")


_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())


def writer_prefix(prefix: str) -> str:
    """The start of a temp file's name that says who writes it (<prefix><pid>@<host>-), so a
    sweep can tell a dead writer's leftovers from a live one's."""
    return f"{prefix}{os.getpid()}@{_HOST}-"


def abandoned(paths: Iterable[Path], prefix: str, pid_gone: Callable[[int], bool], now: float,
              stale_seconds: float) -> list[Path]:
    """The temp files whose writer died: one on this host whose pid is gone, or any file
    untouched for `stale_seconds` (a writer elsewhere, or a name without its writer)."""
    owner_of = re.compile(rf"^{re.escape(prefix)}(\d+)@([^-]*)-")
    found = []
    for path in paths:
        owner = owner_of.match(path.name)
        try:
            old = now - path.stat().st_mtime >= stale_seconds
        except OSError:
            continue
        mine = owner is not None and owner.group(2) == _HOST
        if old or (mine and pid_gone(int(owner.group(1)))):
            found.append(path)
    return found


class FileStore:
    def __init__(self, root: Path):
        self.root = Path(root).resolve() / "files"
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming = Path(root).resolve() / "incoming"  # uploads being received (web/rest/uploads.py)

    def job_dir(self, job_id: str) -> Path:
        return self.root / check_job_id(job_id)

    def inputs_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "inputs"

    def results_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "results"

    def input_path(self, job_id: str, name: str) -> Path:
        return self._inside(self.inputs_dir(job_id), name)

    def result_path(self, job_id: str, name: str) -> Path:
        """The path of an existing result file; 404 for anything else."""
        path = self._inside(self.results_dir(job_id), name)
        if path.is_symlink() or not path.is_file():
            raise AppError("file_not_found", f"This job has no file named {name!r}.", 404)
        return path

    def new_result_path(self, job_id: str, name: str) -> Path:
        return self._inside(self.results_dir(job_id), name)

    @staticmethod
    def _inside(directory: Path, name: str) -> Path:
        if not name or len(name) > NAME_MAX or name != os.path.basename(name) or name in (".", ".."):
            raise AppError("file_not_found", "No such file.", 404, {"name": name})
        if UNSAFE.search(name) or name.startswith("."):
            raise AppError("file_not_found", "No such file.", 404, {"name": name})
        path = directory / name
        if path.resolve().parent != directory.resolve():
            raise AppError("file_not_found", "No such file.", 404, {"name": name})
        return path

    def write_atomic(self, target: Path, chunks: Iterable[bytes], max_bytes: int | None = None) -> int:
        """Write chunks to target through a temp file; returns the size. Raises AppError
        `file_too_large` (and leaves nothing behind) when max_bytes is passed."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=writer_prefix(PART_PREFIX))
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise AppError(
                            "file_too_large",
                            f"The file is larger than the limit of {max_bytes // (1024 * 1024)} MB.",
                            413,
                        )
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if is_disk_full(exc):
                raise AppError("disk_full", "The server's disk is full, so this model could not be saved. "
                               "Please try again once space is freed.", 507) from exc
            raise
        return size

    def remove_abandoned(self, pid_gone: Callable[[int], bool], now: float | None = None,
                         results: bool = True) -> list[Path]:
        """Remove the temp files of writers that died (a kill mid-upload or mid-download): the
        uploads being received and, with `results`, the half-written results (a scan of every
        job folder); returns what went."""
        now = now or time.time()
        found = abandoned(self.incoming.glob(f"{UPLOAD_PREFIX}*"), UPLOAD_PREFIX, pid_gone, now, STALE_UPLOAD_SECONDS)
        if results:
            found += abandoned(self.root.glob(f"*/results/{PART_PREFIX}*"), PART_PREFIX, pid_gone, now,
                               STALE_PART_SECONDS)
        for path in found:
            path.unlink(missing_ok=True)
        return found

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def job_ids(self) -> list[str]:
        return [p.name for p in self.root.iterdir() if p.is_dir() and JOB_ID.match(p.name)]

    def free_mb(self) -> float:
        """Free space where the files live (0 when it cannot be read)."""
        try:
            return shutil.disk_usage(self.root).free / 1048576
        except OSError:
            return 0.0

    def usable(self) -> bool:
        try:
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-"):
                return True
        except OSError:
            return False
