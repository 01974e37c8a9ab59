"""Format conversions and gallery thumbnails of finished models, made in a child process.

Both load the whole model into trimesh. For a model the size FAL makes (327,680 faces, 28 MB)
that cost, in the web process: OBJ 10 CPU s and +435 MB, STL 0.7 s and +288 MB, a thumbnail
1.3 s and +267 MB, with its GIL held from every page, stream and upload meanwhile and the
memory kept. In a child (`python -m image2model.media.mesh_jobs`) the work has a core of its
own and its memory ends with it; at most one runs per core (`SLOTS`), and what it makes is
streamed into the file store, kept beside the job, and made once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from image2model.children import CPU_COUNT, child_env
from image2model.errors import AppError
from image2model.media.meshes import CONVERSIONS
from image2model.storage import FileStore, safe_name

SLOTS = threading.BoundedSemaphore(CPU_COUNT)
TIMEOUT_SECONDS = 600.0  # then the child is killed (an OBJ of a 1.5-million-face model takes about a minute)
CHUNK = 1024 * 1024
FAILED = 3  # the child's exit status when it could not make the file (its reason on stderr, JSON)


def exports_dir(files: FileStore, job_id: str) -> Path:
    return files.job_dir(job_id) / "exports"


def fresh(target: Path, source: Path) -> bool:
    return target.is_file() and target.stat().st_mtime >= source.stat().st_mtime


def converted_model(files: FileStore, job_id: str, source: Path, fmt: str) -> tuple[Path, str, str]:
    """(path, file name to give it, content type) of the job's model at `source` in format
    `fmt` (obj: a ZIP with its .mtl and textures; stl; ply), made unless kept."""
    fmt = fmt.lower()
    if fmt not in CONVERSIONS:
        raise AppError("unsupported_format", f"Cannot convert to '{fmt}'. Choose obj, stl or ply.", 400)
    name = f"{source.stem}.obj.zip" if fmt == "obj" else f"{source.stem}.{fmt}"
    target = exports_dir(files, job_id) / safe_name(name)
    return made(files, source, target, ["convert", fmt]), name, CONVERSIONS[fmt]


def thumbnail(files: FileStore, job_id: str, source: Path, side: int) -> Path:
    """A PNG picture of the job's model at `source`, made unless kept; ValueError when the
    model cannot be drawn, as render_thumbnail says."""
    target = exports_dir(files, job_id) / safe_name(f"{source.stem}.thumbnail.png")
    try:
        return made(files, source, target, ["thumbnail", str(side)])
    except AppError as exc:
        raise ValueError(exc.message) from exc


def made(files: FileStore, source: Path, target: Path, job: list[str]) -> Path:
    if fresh(target, source):
        return target
    with SLOTS:
        if not fresh(target, source):  # another request may have made it while this one waited
            # stderr to a file: a pipe left unread while stdout is read could fill and stall the child
            with tempfile.TemporaryFile() as errors, \
                    subprocess.Popen([sys.executable, "-m", __name__, str(source), *job], env=child_env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors) as child:
                overdue = threading.Timer(TIMEOUT_SECONDS, child.kill)
                overdue.start()
                try:
                    files.write_atomic(target, output_of(child, errors, overdue))
                finally:
                    overdue.cancel()
    return target


def output_of(child: subprocess.Popen, errors: IO[bytes], overdue: threading.Timer) -> Iterator[bytes]:
    """The child's output; raises before the end (so nothing is kept) when it failed."""
    assert child.stdout is not None
    while chunk := child.stdout.read(CHUNK):
        yield chunk
    status = child.wait()
    if status < 0 and overdue.finished.is_set():
        raise AppError("conversion_failed", f"Making this file took longer than {TIMEOUT_SECONDS / 60:.0f} minutes, "
                       "so it was stopped.", 500)
    errors.seek(0)
    error = errors.read().decode("utf-8", "replace").strip()
    if status == FAILED:
        reason = json.loads(error.splitlines()[-1])
        raise AppError(reason["code"], reason["message"], reason["status"])
    if status:
        raise AppError("conversion_failed", f"Making this file failed ({error.splitlines()[-1] if error else status}).",
                       500)


def main(source: str, job: str, option: str) -> int:
    """In the child: the file's bytes on stdout, or the reason on stderr."""
    from image2model.media.meshes import convert
    from image2model.media.render import render_thumbnail

    try:
        data = convert(Path(source), option)[0] if job == "convert" else render_thumbnail(source, int(option))
    except AppError as exc:
        print(json.dumps({"code": exc.code, "message": exc.message, "status": exc.status}), file=sys.stderr)
        return FAILED
    except ValueError as exc:
        print(json.dumps({"code": "invalid_model", "message": str(exc), "status": 502}), file=sys.stderr)
        return FAILED
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
