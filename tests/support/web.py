"""Signing in to the web app as a person or a program would; axe-core to check what a browser shows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from edge_app.store import Store
from edge_app.store.accounts import Accounts, parse_roles
from edge_app.web import services


class AuthActions:
    """Log a browser-like client in and out through the real login form (flaskr's `auth` fixture)."""

    PASSWORD = "a long enough password"

    def __init__(self, app: Flask, client: FlaskClient) -> None:
        self.app, self.client = app, client

    def user(self, name: str, roles: str, language: str = "en") -> str:
        accounts = services.get_from(self.app).accounts
        try:
            accounts.user(name)
        except Exception:
            accounts.add_user(name, parse_roles(roles), self.PASSWORD, language)
        return name

    def csrf(self, path: str = "/login") -> str:
        page = self.client.get(path).get_data(as_text=True)
        marker = 'name="csrf_token" type="hidden" value="'
        start = page.index(marker) + len(marker)
        return page[start : page.index('"', start)]

    def login(self, roles: str = "clinician", name: str | None = None, password: str | None = None) -> Any:
        name = self.user(name or roles.replace(",", "-"), roles)
        token = self.csrf("/login")
        return self.client.post(
            "/login", data={"csrf_token": token, "username": name, "password": password or self.PASSWORD}
        )

    def logout(self) -> Any:
        return self.client.post("/logout", data={"csrf_token": self.csrf("/")})


def token_headers(data_dir: Path, roles: str = "clinician,technician") -> dict[str, str]:
    """A Bearer token made in a data directory, as `edge-app token create` does, as request headers."""
    store = Store(data_dir)
    try:
        secret = Accounts(store).create_token(f"tests-{os.urandom(4).hex()}", parse_roles(roles))
    finally:
        store.close()
    return {"Authorization": f"Bearer {secret}"}


AXE_CORE = "axe-core@4.14.1"  # npm's package, pinned: a new release's rules must not fail a build by themselves


def axe_core_script(folder: Path) -> Path:
    """axe-core's axe.min.js from npm's package, packed once into `folder` by `npm pack` (never a CDN at run time,
    never committed), or a skip saying why it could not be had."""
    script = folder / AXE_CORE.replace("@", "-") / "axe.min.js"
    if script.is_file():
        return script
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed (apt-get install npm): {AXE_CORE} comes from npm's registry")
    script.parent.mkdir(parents=True, exist_ok=True)
    packed = subprocess.run(
        [npm, "pack", AXE_CORE, "--json", "--pack-destination", str(script.parent)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if packed.returncode:
        pytest.skip(f"`npm pack {AXE_CORE}` failed (is npm's registry reachable?): {packed.stderr.strip()[-300:]}")
    tgz = script.parent / json.loads(packed.stdout)[0]["filename"]
    with tarfile.open(tgz) as tar:
        member = tar.extractfile("package/axe.min.js")
        assert member is not None
        script.write_bytes(member.read())
    tgz.unlink()
    return script


def axe_violations(page: Any, script: Path) -> list[str]:
    """axe-core run on the page as shown, each violation as its rule and the first elements it found. The script
    goes in through the DevTools protocol (`evaluate`): the app's CSP rightly refuses an injected script tag."""
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.evaluate(script.read_text(encoding="utf-8"))
    found: list[str] = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations.map(v =>
             `${v.id} (${v.impact}): ${v.help} at ${v.nodes.slice(0, 3).map(n => n.target.join(" ")).join(", ")}`)"""
    )
    return found
