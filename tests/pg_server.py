"""A throwaway PostgreSQL server for the tests: Debian's binaries (``make postgresql`` installs
them), a cluster in a temporary directory, listening on 127.0.0.1 on a free port, with password
(SCRAM) logins. PostgreSQL refuses to run as root, so under root the cluster belongs to the
``postgres`` system user and every server command runs as it (``runuser``).

Nothing here skips: a server that cannot be started fails the tests that need it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

USER = "infermcp"  # the cluster's superuser, who logs in with a password
SYSTEM_USER = "postgres"  # who runs the server when the tests run as root


class PostgresUnavailable(RuntimeError):
    """PostgreSQL is not installed or did not start; says what to do."""


def bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` (Debian's layout), else where pg_ctl is."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    if on_path is None:
        raise PostgresUnavailable("PostgreSQL is not installed: run `make postgresql` (as root "
                                  "it runs apt-get install postgresql)")
    return Path(on_path).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A running cluster; :meth:`new_database` gives each test a database of its own."""

    directory: Path
    port: int
    password: str
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        return (f"postgresql://{USER}:{self.password if password is None else password}"
                f"@127.0.0.1:{self.port}/{database}")

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._numbers)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", SYSTEM_USER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str, log: Path | None = None) -> None:
    result = subprocess.run(_as_server_user(command), capture_output=True, text=True,
                            timeout=120)
    if result.returncode != 0:
        tail = log.read_text()[-2000:] if log and log.exists() else ""
        raise PostgresUnavailable(f"{what} failed ({result.returncode}):\n{result.stdout}"
                                  f"{result.stderr}{tail}")


@contextlib.contextmanager
def running_server() -> Iterator[PostgresServer]:
    """Start a cluster in a new temporary directory; stop it and delete it on exit."""
    binaries = bin_dir()
    directory = Path(tempfile.mkdtemp(prefix="infermcp-pg-"))
    try:
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise PostgresUnavailable(f"no {SYSTEM_USER!r} system user to run PostgreSQL "
                                          "as (Debian's postgresql package creates it)") from None
            os.chown(directory, account.pw_uid, account.pw_gid)
        password = secrets.token_urlsafe(16)
        pwfile = directory / "password"
        pwfile.write_text(password)
        if os.geteuid() == 0:
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        data, log = directory / "data", directory / "server.log"
        _run([str(binaries / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
              "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8",
              "--no-sync"], "initdb")
        port = free_port()
        options = (f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        _run([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
              "-w", "-t", "60", "start"], "pg_ctl start", log)
        try:
            yield PostgresServer(directory, port, password)
        finally:
            _run([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                 "pg_ctl stop", log)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
