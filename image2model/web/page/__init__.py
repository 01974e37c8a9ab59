"""The Gradio page (blocks.py) and the named Gradio API scripts call (api.py)."""
