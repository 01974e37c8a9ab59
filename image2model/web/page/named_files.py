"""A gr.File that hands the function each file's path and the name its client gave it.

A plain gr.File(type="filepath") gives only the path, whose base name is "blob" for what
@gradio/client sends as a Blob or Buffer; the name is in the FileData's orig_name. Gradio's
preprocessing still checks every path (only files uploaded to this server: see app.py
check_file_paths), which a handler run with preprocess=False would skip.

(Gradio writes a .pyi stub next to any Component subclass when it is imported; .gitignore.)
"""

from typing import Any

import gradio as gr
from gradio.data_classes import FileData, ListFiles


class NamedFiles(gr.File):
    """Each file as {"path", "orig_name"}, which uploads_from (page/files.py) reads."""

    @classmethod
    def get_block_name(cls) -> str:
        return "file"  # the page's frontend draws it as the File component it is

    def preprocess(self, payload: ListFiles | FileData | None) -> list[dict[str, Any]] | None:
        if payload is None:
            return None
        sent = list(payload) if isinstance(payload, ListFiles) else [payload]
        paths = super().preprocess(payload)
        paths = paths if isinstance(paths, list) else [paths]
        return [{"path": path, "orig_name": item.orig_name} for path, item in zip(paths, sent)]
