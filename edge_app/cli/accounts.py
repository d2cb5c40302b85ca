"""`edge-app user`, `edge-app token` and `edge-app tls`: the accounts and the certificate, set up at the box.

Each change is written to the audit log with the actor "cli:<login name of the shell>".
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from edge_app.config import Settings
from edge_app.errors import UserError
from edge_app.store import Store
from edge_app.store.accounts import LANGUAGES, ROLES, Accounts, parse_roles


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    roles = f"one or more of {', '.join(ROLES)}, comma-separated"
    user = sub.add_parser("user", help="tablet users: add, list, passwd, disable, enable").add_subparsers(
        dest="action", required=True
    )
    p = user.add_parser("add", help="add a user (the password is asked for)")
    p.add_argument("name")
    p.add_argument("--role", required=True, help=roles)
    p.add_argument("--language", choices=LANGUAGES, help="the user's language (default: server.language)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    user.add_parser("list", help="users, roles and state")
    p = user.add_parser("passwd", help="set a user's password (their sessions end)")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    for action in ("disable", "enable"):
        user.add_parser(action, help=f"{action} an account").add_argument("name")

    token = sub.add_parser("token", help="API tokens for integrations: create, list, revoke").add_subparsers(
        dest="action", required=True
    )
    p = token.add_parser("create", help="make a token and print it (shown once)")
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True, help=roles)
    token.add_parser("list", help="tokens and state")
    token.add_parser("revoke", help="revoke a token").add_argument("name")

    tls = sub.add_parser("tls", help="the HTTPS certificate").add_subparsers(dest="action", required=True)
    p = tls.add_parser("init", help="make a self-signed certificate for this box")
    p.add_argument("--name", action="append", default=[], help="another host name or address the tablets use")
    p.add_argument("--force", action="store_true", help="replace an existing certificate")


def run(command: str, args: argparse.Namespace, settings: Settings) -> int:
    if command == "tls":
        from edge_app.ops.secrets import init_tls

        cert, key, fingerprint = init_tls(settings, args.name, force=args.force)
        print(f"certificate {cert}\nkey         {key}\nSHA-256 fingerprint (check it on the tablet): {fingerprint}")
        return 0
    store = Store(settings.storage.data_dir)
    try:
        actor = f"cli:{login_name()}"
        if command == "user":
            return _user(Accounts(store), store, actor, args, settings)
        return _token(Accounts(store), store, actor, args)
    finally:
        store.close()


def _user(accounts: Accounts, store: Store, actor: str, args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "list":
        for u in accounts.users():
            state = "disabled" if u.disabled else "active"
            print(f"{u.name}\t{','.join(sorted(u.roles))}\t{u.language}\t{state}")
        return 0
    if args.action == "add":
        roles = parse_roles(args.role)
        accounts.add_user(
            args.name, roles, _password(args.password_stdin), args.language or settings.server.language, actor=actor
        )
    elif args.action == "passwd":
        accounts.set_password(args.name, _password(args.password_stdin), actor=actor)
    else:
        accounts.set_disabled(args.name, args.action == "disable", actor=actor)
    print(f"{args.action}: {args.name}: done")
    return 0


def _token(accounts: Accounts, store: Store, actor: str, args: argparse.Namespace) -> int:
    if args.action == "list":
        for t in accounts.tokens():
            print(f"{t.name}\t{','.join(sorted(t.roles))}\t{t.created_at}\t{'revoked' if t.revoked else 'live'}")
        return 0
    if args.action == "create":
        secret = accounts.create_token(args.name, parse_roles(args.role), actor=actor)
        print(secret)
        return 0
    accounts.revoke_token(args.name, actor=actor)
    print(f"revoked: {args.name}")
    return 0


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UserError("the two passwords differ")
    return first


def login_name() -> str:
    try:
        return os.getlogin()
    except OSError:  # no controlling terminal (a script, systemd)
        return os.environ.get("USER", "unknown")
