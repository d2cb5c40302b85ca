"""Users and tokens in the store, and `edge-app user`, `token`, `tls` as a technician types them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from edge_app.errors import NotFound, UserError
from edge_app.store import Store
from edge_app.store.accounts import Accounts, parse_roles
from support.tools import EDGE_APP

pytestmark = pytest.mark.system

Cli = Callable[..., subprocess.CompletedProcess[str]]
PASSWORD = "a long enough password"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def test_passwords_are_kept_as_argon2id_hashes(store: Store) -> None:
    accounts = Accounts(store)
    accounts.add_user("nurse", parse_roles("clinician"), PASSWORD)
    (stored,) = store.query("SELECT password_hash FROM users")
    assert stored[0].startswith("$argon2id$") and PASSWORD not in stored[0]
    assert accounts.authenticate("nurse", PASSWORD) is not None
    assert accounts.authenticate("NURSE", PASSWORD) is not None, "names are not case-sensitive"
    assert accounts.authenticate("nurse", PASSWORD + "x") is None
    assert accounts.authenticate("nobody", PASSWORD) is None


def test_a_hash_made_with_weaker_parameters_is_upgraded_at_login(store: Store) -> None:
    Accounts(store, PasswordHasher(time_cost=1, memory_cost=8192)).add_user("nurse", parse_roles("clinician"), PASSWORD)
    accounts = Accounts(store)
    user = accounts.authenticate("nurse", PASSWORD)
    assert user is not None
    (stored,) = store.query("SELECT password_hash FROM users")
    assert not accounts.hasher.check_needs_rehash(stored[0])
    assert accounts.user("nurse").epoch == user.epoch, "an upgrade is no password change: sessions go on"


@pytest.mark.parametrize(
    ("name", "roles", "password", "message"),
    [
        ("nurse", "clinician", "short", "at least 10 characters"),
        ("", "clinician", PASSWORD, "is not a user name"),
        ("two words", "clinician", PASSWORD, "is not a user name"),
        ("-dash", "clinician", PASSWORD, "is not a user name"),
        ("x" * 65, "clinician", PASSWORD, "is not a user name"),
        ("nurse", "doctor", PASSWORD, "roles must be some of clinician, technician, admin"),
        ("nurse", " , ", PASSWORD, "got none"),
    ],
)
def test_bad_users_are_refused_plainly(store: Store, name: str, roles: str, password: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Accounts(store).add_user(name, parse_roles(roles), password)


def test_names_are_unique_whatever_their_case(store: Store) -> None:
    accounts = Accounts(store)
    accounts.add_user("Nurse", parse_roles("clinician"), PASSWORD)
    with pytest.raises(UserError, match="exists already"):
        accounts.add_user("nurse", parse_roles("admin"), PASSWORD)


def test_what_ends_sessions_and_what_does_not(store: Store) -> None:
    accounts = Accounts(store)
    epoch = accounts.add_user("nurse", parse_roles("clinician"), PASSWORD).epoch
    accounts.set_language("nurse", "fr")
    assert accounts.user("nurse").epoch == epoch and accounts.user("nurse").language == "fr"
    for change in (
        lambda: accounts.set_password("nurse", "another password"),
        lambda: accounts.set_roles("nurse", parse_roles("technician")),
        lambda: accounts.set_disabled("nurse", True),
    ):
        change()
        assert accounts.user("nurse").epoch == epoch + 1
        epoch += 1
    assert accounts.active_count() == 0
    with pytest.raises(NotFound):
        accounts.set_password("nobody", "another password")
    with pytest.raises(UserError, match="language must be one of en, fr"):
        accounts.set_language("nurse", "de")


def test_tokens_are_kept_as_their_hash_and_revoked(store: Store) -> None:
    accounts = Accounts(store)
    secret = accounts.create_token("ris", parse_roles("technician"))
    assert secret.startswith("eat_") and len(secret) > 40
    assert secret not in str([tuple(r) for r in store.query("SELECT * FROM tokens")])
    token = accounts.token(secret)
    assert token is not None and token.name == "ris" and token.roles == {"technician"}
    assert accounts.token(secret[:-1]) is None
    accounts.revoke_token("ris")
    assert accounts.token(secret) is None
    with pytest.raises(NotFound, match="no live token 'ris'"):
        accounts.revoke_token("ris")
    with pytest.raises(UserError, match="exists or existed"):
        accounts.create_token("ris", parse_roles("technician"))


def test_cli_users(cli: Cli, tmp_path: Path) -> None:
    env = {"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path)}
    proc = _cli_stdin(
        ["user", "add", "dr-ade", "--role", "clinician,admin", "--password-stdin", "--language", "fr"], PASSWORD, env
    )
    assert proc.returncode == 0, proc.stderr
    listed = cli("user", "list", env=env)
    assert listed.stdout.split() == ["dr-ade", "admin,clinician", "fr", "active"]
    proc = _cli_stdin(["user", "add", "x", "--role", "clinician", "--password-stdin"], "short", env)
    assert proc.returncode == 2 and "a password needs at least 10 characters" in proc.stderr
    assert cli("user", "disable", "dr-ade", env=env).returncode == 0
    assert cli("user", "list", env=env).stdout.split()[-1] == "disabled"
    assert cli("user", "disable", "nobody", env=env).returncode == 2
    proc = _cli_stdin(["user", "passwd", "dr-ade", "--password-stdin"], "another long one", env)
    assert proc.returncode == 0
    store = Store(tmp_path)
    try:
        assert Accounts(store).authenticate("dr-ade", "another long one") is None, "still disabled"
        actions = [(e["action"], e["subject"]) for e in store.audit_trail()]
        assert ("user.add", "dr-ade") in actions and ("user.passwd", "dr-ade") in actions
        assert all(e["actor"].startswith("cli:") for e in store.audit_trail())
    finally:
        store.close()


def test_cli_tokens(cli: Cli, tmp_path: Path) -> None:
    env = {"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path)}
    proc = cli("token", "create", "--role", "technician", "--name", "ris", env=env)
    assert proc.returncode == 0, proc.stderr
    secret = proc.stdout.strip()
    store = Store(tmp_path)
    try:
        assert Accounts(store).token(secret) is not None
        assert cli("token", "list", env=env).stdout.split()[:2] == ["ris", "technician"]
        assert cli("token", "revoke", "ris", env=env).returncode == 0
        assert Accounts(store).token(secret) is None
        assert cli("token", "create", "--role", "nurse", "--name", "y", env=env).returncode == 2
    finally:
        store.close()


def test_cli_tls_init(cli: Cli, tmp_path: Path) -> None:
    from cryptography import x509

    env = {"EDGE_APP_STORAGE_DATA_DIR": str(tmp_path)}
    proc = cli("tls", "init", "--name", "clinic-ai.local", "--name", "192.168.1.20", env=env)
    assert proc.returncode == 0, proc.stderr
    (printed,) = [line for line in proc.stdout.splitlines() if "SHA-256 fingerprint (check it on the tablet):" in line]
    check = cli("check", env={**env, "EDGE_APP_SERVER_HOST": "0.0.0.0"}).stdout
    assert printed.split()[-1] in check, "`edge-app check` shows it again"
    cert = x509.load_pem_x509_certificate((tmp_path / "tls" / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "clinic-ai.local" in names.get_values_for_type(x509.DNSName)
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["192.168.1.20", "127.0.0.1"]
    assert (tmp_path / "tls" / "key.pem").stat().st_mode & 0o077 == 0, "the key is the owner's alone"
    again = cli("tls", "init", env=env)
    assert again.returncode == 2 and "--force replaces them" in again.stderr
    assert cli("tls", "init", "--force", env=env).returncode == 0


def _cli_stdin(args: list[str], stdin: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`edge-app ARGS` with a password on standard input, as a provisioning script runs it."""
    return subprocess.run(
        [*EDGE_APP, *args], input=stdin + "\n", capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def test_every_account_change_is_audited_by_whoever_made_it(tmp_path: Path) -> None:
    """The accounts write their own audit lines, so the web and the command line cannot differ."""
    from edge_app.store.accounts import Accounts, parse_roles

    store = Store(tmp_path)
    accounts = Accounts(store, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    accounts.add_user("amina", parse_roles("clinician"), "a long password", actor="boss", how="first-run page")
    accounts.set_password("amina", "another long password", actor="amina")
    accounts.set_roles("amina", parse_roles("clinician,technician"), actor="boss")
    accounts.set_disabled("amina", True, actor="boss")
    accounts.set_disabled("amina", False, actor="cli:root")
    accounts.create_token("ris", parse_roles("technician,clinician"), actor="boss")
    accounts.revoke_token("ris", actor="boss")
    rows = [tuple(r) for r in store.query("SELECT actor, action, subject, detail FROM audit ORDER BY id")]
    assert rows == [
        ("boss", "user.add", "amina", "roles=clinician (first-run page)"),
        ("amina", "user.passwd", "amina", ""),
        ("boss", "user.roles", "amina", "roles=clinician,technician"),
        ("boss", "user.disable", "amina", ""),
        ("cli:root", "user.enable", "amina", ""),
        ("boss", "token.create", "ris", "roles=clinician,technician"),
        ("boss", "token.revoke", "ris", ""),
    ]
    with pytest.raises(NotFound):
        accounts.set_disabled("nobody", True, actor="boss")
    assert len(store.query("SELECT id FROM audit")) == 7, "a change that did not happen is not audited"
    store.close()
