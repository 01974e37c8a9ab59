"""Files between the page and the job service: uploads in, conversions and ZIPs out.

Exports are made on demand into `<job dir>/exports/`, which is inside the data directory the
app lets Gradio serve, and disappears with the job when it expires.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from image2model.errors import AppError
from image2model.jobs.model import OPEN_OWNER, Job
from image2model.jobs.service import JobService, Upload
from image2model.media.archive import write_zip
from image2model.media.images import image_extension
from image2model.media.mesh_jobs import converted_model, exports_dir, thumbnail
from image2model.storage import FileStore
from image2model.web.page.view import model_file, preview_file, shows_cutout


THUMBNAIL_SIDE = 256  # pixels of a rendered results-gallery picture

# Base names that say nothing: @gradio/client uploads a Blob or Buffer as "blob".
# Names that say nothing of the photo: a JavaScript Blob's, and Gradio's "file.<ext>" for a
# data: URI (an MCP agent's photos would all be file.png, their errors indistinguishable).
PLACEHOLDER_STEMS = {"blob", "unknown", "file"}


def upload_path(file: Any) -> str:
    """The temp path of one gr.File value (a path string, a FileData dict, or an object with
    `.name`/`path`)."""
    if isinstance(file, dict):
        return str(file.get("path") or file.get("name"))
    return str(getattr(file, "path", None) or getattr(file, "name", None) or file)


def given_name(file: Any, path: Path) -> str:
    """The name the sender gave the file: FileData.orig_name when the client sent one (the
    JavaScript client's handle_file("dir/duck.png") uploads a nameless blob with that orig_name),
    else the temp file's base name (Gradio keeps the uploaded file name there); "" for none."""
    orig = file.get("orig_name") if isinstance(file, dict) else getattr(file, "orig_name", None)
    for candidate in (orig, path.name):
        base = os.path.basename(str(candidate or "").replace("\\", "/")).strip()
        if base and Path(base).stem.lower() not in PLACEHOLDER_STEMS:
            return base
    return ""


def uploads_from(files: Sequence[Any] | None) -> list[Upload]:
    """Each upload under the name its sender gave it; a nameless one (a Blob from JavaScript,
    a data: URI) becomes image-<n>, its place in the list, with the extension of its content,
    as hosted models want one."""
    if isinstance(files, (str, dict)):  # one file sent without its list
        files = [files]
    uploads = []
    for n, file in enumerate(files or [], start=1):
        path = Path(upload_path(file))
        name = given_name(file, path) or f"image-{n}{image_extension(path)}"
        uploads.append(Upload(name=name, path=path))
    return uploads


def export_model(service: JobService, files: FileStore, job_id: str, index: int, fmt: str) -> Path:
    """The model of item `index` as `fmt` (glb, obj as a zip with its texture, stl, ply)."""
    job = service.get(job_id, OPEN_OWNER)
    if not 0 <= index < len(job.items) or job.items[index].model_file is None:
        raise AppError("file_not_found", "That model is not ready yet.", 404)
    source = files.result_path(job_id, job.items[index].model_file.name)
    if fmt.lower() == "glb":
        return source
    return converted_model(files, job_id, source, fmt)[0]


def gallery_picture(files: FileStore, job_id: str, item: dict[str, Any]) -> Path:
    """The picture of a finished item in the results gallery: the model's own preview when a
    hosted model made one, else a thumbnail rendered from the GLB (made once, kept with the
    job's exports). The offline model's preview is its cut-out, not a view of the model."""
    preview = preview_file(item)
    if preview is not None and not shows_cutout(item):
        return files.result_path(job_id, preview["name"])
    source = files.result_path(job_id, model_file(item)["name"])  # type: ignore[index]
    return thumbnail(files, job_id, source, THUMBNAIL_SIDE)


def result_paths(files: FileStore, job: Job) -> list[Path]:
    """Every result file (models and previews) of the finished items, in job order."""
    paths = []
    for item in job.items:
        for result in item.files:
            try:
                paths.append(files.result_path(job.id, result.name))
            except AppError:
                continue  # listed but gone (expired or deleted): leave it out
    return paths


def export_zip(service: JobService, files: FileStore, job_id: str) -> Path:
    """All results of the job in one ZIP, rebuilt only when the set of results changed."""
    job = service.get(job_id, OPEN_OWNER)
    paths = result_paths(files, job)
    if not paths:
        raise AppError("file_not_found", "No model is ready yet, so there is nothing to download.", 404)
    target = exports_dir(files, job_id) / f"image2model-{job_id[:8]}-{len(paths)}-files.zip"
    if not target.is_file() or target.stat().st_mtime < max(os.path.getmtime(p) for p in paths):
        write_zip(paths, target)
    return target
