"""A throwaway PostgreSQL cluster on loopback for the tests (Debian's postgresql binaries)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

BIN_DIRS = [Path("/usr/lib/postgresql") / v / "bin" for v in ("17", "16", "15", "14", "13")]


def find_bin(name: str) -> str | None:
    for d in BIN_DIRS:
        if (d / name).exists():
            return str(d / name)
    return shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """initdb + pg_ctl start in ``root``; as root the server runs as the ``postgres`` user."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def run(self, *cmd: str) -> None:
        subprocess.run([*self.as_user, *cmd], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> str:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        data = self.root / "data"
        self.run(find_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "hex", "--no-sync")
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run(find_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(self.root / "log"), "-w", "start")
        return f"postgresql://hex@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            self.run(find_bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop")


def available() -> bool:
    return bool(find_bin("initdb") and find_bin("pg_ctl")) and (os.geteuid() != 0 or shutil.which("runuser"))
