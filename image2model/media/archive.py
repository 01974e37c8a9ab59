"""ZIP archives of a job's results, shared by the page (a file on disk) and REST (a stream).

Models are already compressed (GLB textures are PNG/JPEG), so entries are stored, not deflated:
that keeps building a ZIP of 25 models cheap and lets the stream start at once.
"""

from __future__ import annotations

import os
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from image2model.storage import make_unique

CHUNK = 256 * 1024
FILE_MODE = 0o100644 << 16  # entries unzip as plain readable files (results are 0600 on disk)


def entry(name: str, path: Path | None = None) -> zipfile.ZipInfo:
    """A ZIP entry named `name` (dated like `path`, else now) that unzips readable: without
    this, Python's zipfile gives it 0600, and unzip makes a file only its owner can read."""
    info = zipfile.ZipInfo.from_file(path, name) if path else zipfile.ZipInfo(name, time.localtime()[:6])
    info.external_attr = FILE_MODE
    return info


class _Pipe:
    """A write-only file object that hands each written block to the reader."""

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.position = 0

    def write(self, data: bytes) -> int:
        if data:
            self.blocks.append(bytes(data))
            self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        """Nothing is buffered here."""

    def take(self) -> bytes:
        data, self.blocks = b"".join(self.blocks), []
        return data


def _arcnames(paths: Sequence[Path]) -> list[str]:
    """Entry names: the file names, with clashes made unique ("a.glb", "a-2.glb")."""
    return make_unique([path.name for path in paths],
                       lambda name, n: f"{Path(name).stem}-{n}{Path(name).suffix}")


def zip_results(paths: Sequence[Path]) -> Iterator[bytes]:
    """Stream a ZIP of `paths` (flat, by file name) in chunks, without a temp file."""
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:  # type: ignore[arg-type]
        for path, arcname in zip(paths, _arcnames(paths)):
            info = entry(arcname, path)
            info.compress_type = zipfile.ZIP_STORED
            with open(path, "rb") as source, archive.open(info, "w", force_zip64=True) as sink:
                while block := source.read(CHUNK):
                    sink.write(block)
                    if data := pipe.take():
                        yield data
            if data := pipe.take():
                yield data
    if data := pipe.take():
        yield data


def write_zip(paths: Sequence[Path], target: Path) -> Path:
    """Write a ZIP of `paths` to `target` atomically (a reader never sees half a ZIP)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".zip-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in zip_results(paths):
                out.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
