"""A throwaway PostgreSQL server for tests: Debian's `postgresql` binaries, a temporary data directory, loopback
only, trust authentication, stopped at the end. As root the server runs as the `postgres` user (PostgreSQL refuses
to run as root). `find_binaries()` is None where PostgreSQL is not installed (tests then skip, or fail under
ABLATE_REQUIRE_POSTGRES=1, which CI sets after installing it)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


class ServerURL(str):
    """The server's SQLAlchemy URL, with `stop()` and `start()` to simulate an outage."""

    start: "Callable[[], None]"
    stop: "Callable[[], None]"


def find_binaries() -> Path | None:
    """The folder with initdb and pg_ctl (PATH first, then Debian's /usr/lib/postgresql/<version>/bin)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server(database: str = "ablate") -> Iterator[str]:
    """Start a server and yield the SQLAlchemy URL of a fresh database (postgresql+psycopg://ablate@127.0.0.1:P/db)."""
    bin_dir = find_binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql)")
    root = Path(tempfile.mkdtemp(prefix="ablate-pg-", dir="/tmp"))
    data, port = root / "data", _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL will not run as root
        user = pwd.getpwnam("postgres")
        os.chmod(root, 0o755)
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    run = lambda *argv: subprocess.run([*as_user, *argv], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "ablate", "--auth=trust", "-E", "UTF8")

    def start() -> None:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "start",
            "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100")

    def stop() -> None:  # an outage: clients are disconnected, new connections refused until start()
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")

    start()
    try:
        import psycopg

        deadline = time.time() + 30
        while True:
            try:
                with psycopg.connect(f"host=127.0.0.1 port={port} user=ablate dbname=postgres",
                                     autocommit=True) as connection:
                    connection.execute(f'CREATE DATABASE "{database}"')
                break
            except psycopg.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        url = ServerURL(f"postgresql+psycopg://ablate@127.0.0.1:{port}/{database}")
        url.start, url.stop = start, stop
        yield url
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
