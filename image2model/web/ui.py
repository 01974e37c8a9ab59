"""The Gradio page (placeholder: replaced by the UI issue)."""

from __future__ import annotations

import gradio as gr

from image2model.runtime import Runtime

UI_THEME = None
UI_CSS = ""
UI_HEAD = ""


def build_ui(runtime: Runtime) -> gr.Blocks:
    with gr.Blocks(title="image2model") as blocks:
        gr.Markdown("# image2model")
    return blocks
