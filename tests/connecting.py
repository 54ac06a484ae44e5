"""Helpers for the per-user credential tests: a gateway that knows its own URL, the people
who use it, reading the connect link out of a call's answer, and a person's browser on the
connect pages (`confirm`, `submit_headers`): an `httpx2.AsyncClient` is one browser, its cookie
jar the browser's."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx2

from tests.api.conftest import McpClient
from tests.harness import RunningGateway, base_url_of, listening_socket, serve_gateway, write_config


@asynccontextmanager
async def serve_gateway_at_own_url(
    directory: Path, body: str, sock: socket.socket | None = None
) -> AsyncIterator[RunningGateway]:
    """A gateway whose config names its own address as `public_url` (connect links and the
    OAuth redirect URI start with it), so it listens on a socket bound before the config
    (pass `sock` when the test needs the address sooner, e.g. to register a client)."""
    sock = sock or listening_socket()
    config = write_config(directory, f"database: ./gw.db\npublic_url: {base_url_of(sock)}\n{body}")
    async with serve_gateway(config, sock) as gateway:
        yield gateway


@dataclass
class People:
    alice: McpClient  # a key bound to user alice
    bob: McpClient  # a key bound to user bob
    admin: dict[str, str]  # headers of an admin key, itself bound to alice


async def people(gateway: RunningGateway, http: httpx2.AsyncClient) -> People:
    store = gateway.gateway.store
    org = await store.ensure_organisation("default")
    alice = await store.create_api_key(org.id, user_id="alice")
    bob = await store.create_api_key(org.id, user_id="bob")
    admin = await store.create_api_key(org.id, is_admin=True, user_id="alice")
    return People(
        McpClient(http, gateway.url, alice.secret),
        McpClient(http, gateway.url, bob.secret),
        {"authorization": f"Bearer {admin.secret}"},
    )


def connect_url(answer: dict[str, Any]) -> str:
    """The link a call without a usable credential answers with (checked to be in the text too)."""
    result = answer["result"]
    assert result["isError"] is True, result
    url: str = result["_meta"]["mcpgw/connect"]["url"]
    assert url in result["content"][0]["text"]
    return url


def text_of(answer: dict[str, Any]) -> str:
    result = answer["result"]
    assert not result.get("isError"), result
    text: str = result["content"][0]["text"]
    return text


def leaks(directory: Path, log: str, secrets: list[str]) -> list[str]:
    """Where any of `secrets` appears in clear: the files in `directory` (the database, its WAL,
    the key file) or the captured log."""
    found = []
    files = {file.name: file.read_bytes() for file in directory.iterdir() if file.is_file()}
    for secret in secrets:
        found += [f"{secret[:8]}… in {name}" for name, data in files.items() if secret.encode() in data]
        if secret in log:
            found.append(f"{secret[:8]}… in the log")
    return found


@dataclass
class PageForm:
    """A page's first form: where it posts (absolute) and its hidden fields."""

    action: str
    hidden: dict[str, str] = field(default_factory=dict)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.hidden: dict[str, str] = {}
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form" and self.action is None:
            self.action, self._inside = attributes.get("action", ""), True
        elif tag == "input" and self._inside and attributes.get("type") == "hidden":
            self.hidden[attributes.get("name", "")] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False


def form_of(page: httpx2.Response) -> PageForm:
    parser = _FormParser()
    parser.feed(page.text)
    assert parser.action is not None, page.text
    return PageForm(urljoin(str(page.url), parser.action), parser.hidden)


async def confirm(http: httpx2.AsyncClient, url: str) -> httpx2.Response:
    """Open a connect link in the browser `http` and confirm whose credential it makes: the
    answer, unfollowed (a redirect to the authorization server, or the header form)."""
    page = await http.get(url, follow_redirects=False)
    assert page.status_code == 200, page.text
    form = form_of(page)
    return await http.post(form.action, data=form.hidden, follow_redirects=False)


async def submit_headers(http: httpx2.AsyncClient, url: str, values: dict[str, str]) -> httpx2.Response:
    """Confirm a header flow's link in the browser `http`, then submit `values` on its form."""
    page = await confirm(http, url)
    assert page.status_code == 200 and 'type="password"' in page.text, page.text
    return await http.post(form_of(page).action, data=values, follow_redirects=False)
