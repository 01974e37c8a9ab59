"""The MCP server for AI agents, driven by the official `mcp` client over streamable HTTP
against the real app on uvicorn (real huey consumer, offline model, SQLite).

An agent lists the tools, sends photos as data: URIs (it has no way to upload a file) and gets
absolute links to the GLBs, which it downloads. The MCP setting is checked both ways.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from image2model.config import Settings
from image2model.examples import EXAMPLES_DIR
from tests.netutil import free_port

SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
TOOLS = {"generate", "job_status", "cancel_job", "models"}
MCP_PATH = "/gradio_api/mcp/"
FILE_LINK = re.compile(r"https?://[^\s'\"]+/gradio_api/file=[^\s'\"]+\.glb")


def data_uri(name: str) -> str:
    """A photo the way an agent can send one: inline, base64."""
    return "data:image/png;base64," + base64.b64encode((EXAMPLES_DIR / name).read_bytes()).decode()


def with_session(url: str, use: Callable[[ClientSession], Awaitable[Any]],
                 headers: dict[str, str] | None = None) -> Any:
    """Connect the official client to the MCP endpoint, run `use`, disconnect."""

    async def run() -> Any:
        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=120)) as http:
            async with streamable_http_client(url + MCP_PATH, http_client=http) as (read, write, _):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    return await use(session)

    return asyncio.run(run())


def values_of(result: CallToolResult) -> list[Any]:
    """The tool's output values, parsed from the text an agent reads (Gradio writes each value
    with str(): Python literals, not JSON)."""
    values = []
    for content in result.content:
        assert content.type == "text", content
        try:
            values.append(json.loads(content.text))
        except json.JSONDecodeError:
            values.append(ast.literal_eval(content.text))
    return values


def status_and_links(result: CallToolResult) -> tuple[dict[str, Any], list[str]]:
    """The job status and the GLB links from a generate result. Gradio 6.31 sends one text
    holding [status, files] to a client that asked for no progress, two texts to one that did."""
    assert not result.isError, result.content
    values = values_of(result)
    if len(values) == 1:
        values = values[0]
    status, files = values
    text = " ".join(content.text for content in result.content)
    links = FILE_LINK.findall(text)
    assert all(file["url"].endswith(".glb") for file in files), files  # the models only
    assert links == [file["url"] for file in files], "the links an agent reads are not the result files"
    return status, links


def assert_glb_downloads(links: list[str], origin: str | None = None) -> None:
    for link in links:
        if origin is not None:  # a public address (a proxy's): fetch the same path from here
            link = origin + link[link.index("/gradio_api/"):]
        response = httpx.get(link, timeout=30)
        assert response.status_code == 200, (link, response.status_code)
        assert response.content[:4] == b"glTF", f"{link} is not a GLB"
        assert len(response.content) > 1000


@SQLITE
def test_an_agent_lists_the_tools_then_turns_two_photos_into_glbs(live_server_factory, backend) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="")  # no key: MCP is on by default
    max_images = server.runtime.settings.max_images
    progress: list[tuple[float, str | None]] = []

    async def use(session: ClientSession) -> tuple[Any, ...]:
        tools = (await session.list_tools()).tools
        args = {"images": [data_uri("duck.png"), data_uri("mug.png")], "model": "local/relief",
                "options": {"resolution": 96}}
        plain = await session.call_tool("generate", args)

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append((value, message))

        streamed = await session.call_tool("generate", args, progress_callback=on_progress)
        status, _ = status_and_links(plain)
        looked_up = await session.call_tool("job_status", {"job_id": status["job_id"]})
        catalog = await session.call_tool("models", {})
        not_a_photo = await session.call_tool("generate", {"images": ["data:text/plain;base64,aGVsbG8="]})
        return tools, plain, streamed, looked_up, catalog, not_a_photo

    tools, plain, streamed, looked_up, catalog, not_a_photo = with_session(server.url, use)

    by_name = {tool.name: tool for tool in tools}
    assert set(by_name) == TOOLS
    for tool in tools:
        jsonschema.Draft202012Validator.check_schema(tool.inputSchema)  # the SDK validates calls with it
        assert len(tool.description or "") > 60, tool.name
        for name, prop in tool.inputSchema["properties"].items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
    generate = by_name["generate"]
    assert "3D model" in generate.description and "GLB" in generate.description
    assert "url" in generate.description.split("Returns:")[1], "the description must say links come back"
    images = generate.inputSchema["properties"]["images"]
    assert images["type"] == "array" and images["items"]["type"] == "string"
    assert images["minItems"] == 1 and images["maxItems"] == max_images
    assert "data:" in images["description"] and "http" in images["description"]
    assert "at most 4 MB in all" in json.dumps(images), "an agent must learn the request cap before it hits it"
    assert generate.inputSchema["properties"]["options"]["type"] == "object"
    assert generate.inputSchema["required"] == ["images"]
    assert by_name["job_status"].inputSchema["required"] == ["job_id"]

    for result in (plain, streamed):
        status, links = status_and_links(result)
        assert status["state"] == "succeeded" and status["model"] == "local/relief", status
        assert status["params"]["resolution"] == 96, "options did not reach the job"
        assert len(status["items"]) == 2 and len(set(links)) == 2
        # data: URIs carry no name: each photo is called by its place, not all "file.png"
        assert [i["name"] for i in status["items"]] == ["image-1.png", "image-2.png"]
        assert all(link.startswith(server.url + "/gradio_api/file=") for link in links), links
        assert_glb_downloads(links)
    assert progress, "a client that asked for progress got none"

    (looked_up_status,) = values_of(looked_up)
    assert looked_up_status["job_id"] == status_and_links(plain)[0]["job_id"]
    assert looked_up_status["state"] == "succeeded"
    (models,) = values_of(catalog)
    assert "local/relief" in {model["id"] for model in models}
    assert not_a_photo.isError and "is not an image we can read" in not_a_photo.content[0].text


@SQLITE
def test_links_follow_the_address_the_agent_used_behind_a_proxy(live_server_factory, backend) -> None:  # noqa: ANN001
    """Through a proxy (or a port mapping) the agent's address does not lead back to the app
    from inside. Gradio's MCP calls the app back over HTTP: without our fix it calls the
    proxy's address and fails; the links must still be the proxy's, which the agent can reach."""
    server = live_server_factory(fal_key="")
    public = f"localhost:{free_port()}"  # nothing listens there
    headers = {"X-Forwarded-Host": public, "X-Forwarded-Proto": "https"}

    async def use(session: ClientSession) -> CallToolResult:
        return await session.call_tool("generate", {"images": [data_uri("vase.png")]})

    status, links = status_and_links(with_session(server.url, use, headers))
    assert status["state"] == "succeeded"
    assert len(links) == 1 and links[0].startswith(f"https://{public}/gradio_api/file="), links
    assert_glb_downloads(links, origin=server.url)


def test_the_gradio_internals_we_repair_are_still_there(tmp_path: Path) -> None:
    """mcp_tools.py relies on GradioMCPServer's `api_info`, `convert_strings_to_filedata`,
    `get_input_schema` and `_local_url` (Gradio 6.31): say so plainly when they move."""
    from app import create_app
    from image2model.runtime import Runtime
    from image2model.web.mcp_tools import mcp_server_of
    from tests.conftest import make_settings

    runtime = Runtime(make_settings(tmp_path / "data", fal_key="", embedded_worker=False))
    try:
        app = create_app(runtime)
        (gradio_app,) = [route.app for route in app.routes if hasattr(getattr(route, "app", None), "get_blocks")]
        server = mcp_server_of(gradio_app.get_blocks())
        assert server is not None, "mount_gradio_app no longer leaves blocks.mcp_server_obj"
        assert server._local_url is None, "GradioMCPServer._local_url moved (LoopbackToSelf sets it)"
        assert server.convert_strings_to_filedata.__name__ == "convert_lists_too"
        schema, positions = server.get_input_schema("generate")
        assert positions == [["images", "items"]], "Gradio marks file inputs differently now"
        jsonschema.Draft202012Validator.check_schema(schema)
    finally:
        runtime.close()


def initialize(url: str) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    return httpx.post(url + MCP_PATH, json=body, headers={"Accept": "application/json, text/event-stream"}, timeout=10)


@SQLITE
def test_with_a_fal_key_mcp_is_off_unless_asked(live_server_factory, fake_fal, backend) -> None:  # noqa: ANN001
    """Every generate call with a key spends money, so an agent gets the tools only on request."""
    default = live_server_factory()  # FAL_KEY is "test-key", MCP_SERVER unset
    assert initialize(default.url).status_code == 404
    asked = live_server_factory(mcp_server=True)
    response = initialize(asked.url)
    assert response.status_code == 200 and "serverInfo" in response.text

    async def use(session: ClientSession) -> set[str]:
        return {tool.name for tool in (await session.list_tools()).tools}

    assert with_session(asked.url, use) == TOOLS


@pytest.mark.parametrize(("fal_key", "mcp_server", "enabled"), [
    ("", None, True), ("k", None, False), ("k", "true", True), ("", "false", False),
])
def test_mcp_server_setting(monkeypatch: pytest.MonkeyPatch, fal_key: str, mcp_server: str | None,
                            enabled: bool) -> None:
    monkeypatch.setenv("FAL_KEY", fal_key)
    if mcp_server is None:
        monkeypatch.delenv("MCP_SERVER", raising=False)
    else:
        monkeypatch.setenv("MCP_SERVER", mcp_server)
    assert Settings(_env_file=None).mcp_enabled is enabled
