"""Signing in to the web app as a person or a program would."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
