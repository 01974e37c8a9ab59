"""Gradio's MCP server (/gradio_api/mcp/) for the named API, made to work for /generate.

Gradio 6.31 turns each public endpoint into an MCP tool, but as built its server cannot call
/generate at all, and its calls back into the app can go astray. We repair three things on the
server object Gradio made, through its internals (tests/test_mcp.py fails when they move):

- `server.api_info`: the input schemas. gr.JSON says `{"type": {}}`, which is not JSON Schema,
  and gr.File(file_count="multiple") points `items` at `#/$defs/...` from inside a property;
  the MCP SDK validates every call against the schema, so every call failed.
- `server.convert_strings_to_filedata`: it turns the URLs an agent sends into Gradio files only
  at fixed schema paths, never inside an array, so a list of photos arrived as bare strings.
- `server._local_url`: queued tools are run by a gradio_client calling this app over HTTP, at
  the address the agent used unless this is set. Behind a proxy, a port mapping or a private
  Space that address may not lead back here; the socket the request arrived on does.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import gradio as gr
from starlette.types import ASGIApp, Receive, Scope, Send

from image2model.units import size_text

log = logging.getLogger(__name__)

MCP_PATH = "/gradio_api/mcp"
PHOTO = "a photo: a public http(s) URL, or a data: URI (data:image/png;base64,...)"


def photo_description() -> str:
    """PHOTO, with the mcp package's cap on a request body (it answers 413 over it, before
    any tool sees the call), so an agent sends big photos as URLs."""
    import mcp.server.streamable_http_manager as manager

    limit = getattr(manager, "DEFAULT_MAX_REQUEST_BODY_SIZE", None)
    if not limit:
        return PHOTO
    return (f"{PHOTO}. One call may carry at most {size_text(limit)} in all, so send a photo of more than "
            f"about {size_text(limit * 3 // 4 - 65536)} (or several big ones) as a URL")


def mcp_server_of(blocks: gr.Blocks) -> Any | None:
    """The GradioMCPServer that mount_gradio_app made, or None when MCP is off."""
    return getattr(blocks, "mcp_server_obj", None)


def repair_mcp_server(blocks: gr.Blocks, max_images: int) -> None:
    """Make the tools' input schemas valid and lists of photos arrive as files (see above)."""
    server = mcp_server_of(blocks)
    if server is None:
        if getattr(blocks, "mcp_error", None):
            log.error("MCP server not started: %s", blocks.mcp_error)
        return
    for endpoint in server.api_info["named_endpoints"].values():
        for parameter in endpoint["parameters"]:
            parameter["type"] = valid_schema(parameter["type"], max_images)
    convert = server.convert_strings_to_filedata

    def convert_lists_too(value: Any, positions: list[list[str | int]]) -> Any:
        """A file list at schema path [name, "items"] means every index of that argument."""
        expanded = list(positions)
        for position in positions:
            if len(position) == 2 and position[1] == "items" and isinstance(value, dict):
                items = value.get(position[0])
                if isinstance(items, list):
                    expanded += [[position[0], index] for index in range(len(items))]
        return convert(value, expanded)

    server.convert_strings_to_filedata = convert_lists_too


def valid_schema(schema: dict[str, Any], max_images: int) -> dict[str, Any]:
    """The schema of one input as JSON Schema that the MCP SDK accepts."""
    if schema.get("type") == {}:  # gr.JSON: our only one is `options`, a JSON object
        return {"type": "object"}
    defs = schema.get("$defs") or {}
    ref = (schema.get("items") or {}).get("$ref", "")
    if schema.get("type") == "array" and ref.startswith("#/$defs/") and ref[8:] in defs:
        item = copy.deepcopy(defs[ref[8:]])  # FileData, with its `meta` ref inlined too
        for name, prop in item.get("properties", {}).items():
            target = prop.get("$ref", "")
            if target.startswith("#/$defs/") and target[8:] in defs:
                item["properties"][name] = copy.deepcopy(defs[target[8:]])
        for noise in ("title", "required"):
            item.pop(noise, None)
        item["description"] = photo_description()  # Gradio replaces the rest with {"type": "string", ...}
        return {"type": "array", "items": item, "minItems": 1, "maxItems": max_images}
    return schema


class LoopbackToSelf:
    """ASGI middleware: before the first MCP request is served, point Gradio's MCP client (its
    calls back into this app) at the address this server is listening on."""

    def __init__(self, app: ASGIApp, blocks: gr.Blocks):
        self.app = app
        self.blocks = blocks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = mcp_server_of(self.blocks)
        if (server is not None and server._local_url is None and scope["type"] == "http"
                and scope["path"].startswith(MCP_PATH) and scope.get("server")):
            host, port = scope["server"]
            host = f"[{host}]" if ":" in host else host
            server._local_url = f"{scope.get('scheme', 'http')}://{host}:{port}/"
        await self.app(scope, receive, send)
