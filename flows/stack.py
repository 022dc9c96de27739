"""The server stack on one machine: PostgreSQL, the Prefect server and the MLflow server.

In: a state folder (the database cluster, the MLflow artifact store, the servers' logs), ports
(free ones by default) and the database password from `$LLMPIPE_DB_PASSWORD` (when unset, a
random one is made and kept in `<state>/db-password`, readable by its owner only).
Out: the three services running on 127.0.0.1, and the environment that points a pipeline at
them (`PREFECT_API_URL`, `MLFLOW_TRACKING_URI`); no secret is in it.

The servers are started exactly as `docker/compose.yaml` starts them: the commands are
`SERVER_COMMANDS` below, every setting (database URLs, host, port, artifact store) comes from
environment variables, so credentials never appear on a command line (`ps` shows those).
tests/test_docker.py checks that the compose file runs the same commands.

    python -m flows.stack up --dir ~/.llmpipe-stack     # prints the client environment
    python -m flows.stack env --dir ~/.llmpipe-stack    # prints it again
    python -m flows.stack down --dir ~/.llmpipe-stack

PostgreSQL comes from the system (Debian: `apt-get install postgresql`); its programs are found
in `$LLMPIPE_PG_BIN`, on PATH, or in /usr/lib/postgresql/<version>/bin. As root, the database
programs run as the `postgres` user, which the Debian package creates.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

# What each service runs; its settings come from the environment (see `server_env`).
# `deploy` registers prefect.yaml's deployments; the worker runs their flow runs.
SERVER_COMMANDS: dict[str, list[str]] = {
    "prefect-server": ["prefect", "server", "start"],
    "mlflow": ["mlflow", "server"],
    "deploy": [
        "sh",
        "-c",
        "prefect work-pool create llmpipe --type process --overwrite"
        " && prefect --no-prompt deploy --all",
    ],
    "prefect-worker": [
        "prefect",
        "worker",
        "start",
        "--pool",
        "llmpipe",
        "--type",
        "process",
        "--with-healthcheck",
    ],
}
HEALTH_PATHS = {"prefect-server": "/api/health", "mlflow": "/health"}
DB_USER = "llmpipe"
DATABASES = ("prefect", "mlflow")
QUIET = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


# Where `prefect server start` listens unless told otherwise.
DEFAULT_PREFECT_API = "http://127.0.0.1:4200/api"


def prefect_server_answers(api_url: str = DEFAULT_PREFECT_API, timeout: float = 1.0) -> bool:
    """Whether a Prefect server answers its health check at `api_url` (within `timeout`)."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as reply:
            return reply.status == 200
    except (OSError, ValueError):
        return False


def _profile_api_url() -> str | None:
    """PREFECT_API_URL of the active Prefect profile, read from its file: importing Prefect
    would fix its settings before this process could point it at a server."""
    import tomllib

    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    try:
        profiles = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    return (profiles.get("profiles", {}).get(active) or {}).get("PREFECT_API_URL") or None


def use_running_prefect_server(
    api_url: str = DEFAULT_PREFECT_API, log=lambda text: print(text, file=sys.stderr)
) -> str | None:
    """Point this process at the Prefect server running at the default address, when one
    answers and nothing else is configured; returns its API URL, or None when a run would
    start its own temporary server (15-25 s) as before. LLMPIPE_REUSE_PREFECT_SERVER=0 turns
    this off. Call it before Prefect is imported: Prefect reads its settings once."""
    if os.environ.get("LLMPIPE_REUSE_PREFECT_SERVER", "1") == "0":
        return None
    if os.environ.get("PREFECT_API_URL") or _profile_api_url():
        return None  # the environment or the Prefect profile names a server: that one is used
    if not prefect_server_answers(api_url):
        return None
    os.environ["PREFECT_API_URL"] = api_url
    log(
        f"Using the Prefect server that answers at {api_url.removesuffix('/api')} "
        "(instead of starting a temporary one)."
    )
    return api_url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder holding initdb/pg_ctl/psql, or None when PostgreSQL is not installed."""
    configured = os.environ.get("LLMPIPE_PG_BIN")
    if configured:
        return Path(configured)
    on_path = shutil.which("initdb")
    if on_path:  # Debian links some programs onto PATH; psql lives beside the real ones
        return Path(on_path).resolve().parent
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def database_urls(password: str, host: str, port: int) -> dict[str, str]:
    """The servers' database settings: Prefect needs an async driver, MLflow psycopg2."""
    auth = f"{DB_USER}:{quote(password, safe='')}@{host}:{port}"
    return {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{auth}/prefect",
        "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg2://{auth}/mlflow",
    }


def server_env(service: str, host: str, port: int, artifacts: str | None = None) -> dict[str, str]:
    """Where a server listens (and, for MLflow, where artifacts go), as environment variables."""
    if service == "prefect-server":
        return {"PREFECT_SERVER_API_HOST": host, "PREFECT_SERVER_API_PORT": str(port)}
    if service == "mlflow":
        env = {
            "MLFLOW_HOST": host,
            "MLFLOW_PORT": str(port),
            "MLFLOW_WORKERS": "1",
            # The job runner serves GenAI features this pipeline does not use (8 processes).
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        if artifacts:
            env["MLFLOW_ARTIFACTS_DESTINATION"] = artifacts
        return env
    raise ValueError(f"unknown server {service!r}")


def wait_healthy(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@dataclass
class Stack:
    """A PostgreSQL cluster and the two servers, kept in `state` (see `up` and `down`)."""

    state: Path
    pg_port: int = 0
    prefect_port: int = 0
    mlflow_port: int = 0
    host: str = "127.0.0.1"
    pids: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ files and settings

    @property
    def record(self) -> Path:
        return self.state / "stack.json"

    @property
    def artifacts(self) -> Path:
        return self.state / "mlartifacts"

    @property
    def pg_dir(self) -> Path:
        return self.state / "postgres"

    def _password(self) -> str:
        from_env = os.environ.get("LLMPIPE_DB_PASSWORD")
        if from_env:
            return from_env
        path = self.state / "db-password"
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(16))
        return path.read_text().strip()

    def client_env(self) -> dict[str, str]:
        """What a pipeline (or a worker) needs to use the servers; holds no secret."""
        return {
            "PREFECT_API_URL": f"http://{self.host}:{self.prefect_port}/api",
            "MLFLOW_TRACKING_URI": f"http://{self.host}:{self.mlflow_port}",
        }

    def ui_urls(self) -> dict[str, str]:
        return {
            "prefect": f"http://{self.host}:{self.prefect_port}",
            "mlflow": f"http://{self.host}:{self.mlflow_port}",
        }

    # ------------------------------------------------------------------------ PostgreSQL

    def _as_db_owner(self, command: list[str]) -> list[str]:
        """PostgreSQL refuses to run as root: run its programs as the `postgres` user."""
        if os.geteuid() != 0:
            return command
        return ["runuser", "-u", "postgres", "--", *command]

    def _start_postgres(self, password: str) -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        data = self.pg_dir / "data"
        self.pg_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.pg_dir, *self.pg_dir.rglob("*")):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        if not (data / "PG_VERSION").exists():
            pwfile = self.pg_dir / ".initpw"
            pwfile.write_text(password)
            if os.geteuid() == 0:
                os.chown(pwfile, owner.pw_uid, owner.pw_gid)
            pwfile.chmod(0o600)
            try:
                subprocess.run(
                    self._as_db_owner(
                        [
                            str(bindir / "initdb"),
                            "-D",
                            str(data),
                            "-U",
                            DB_USER,
                            "--auth=scram-sha-256",
                            f"--pwfile={pwfile}",
                            "-E",
                            "UTF8",
                            "--no-locale",
                            "--no-sync",
                        ]
                    ),
                    check=True,
                    capture_output=True,
                    text=True,
                )
            finally:
                pwfile.unlink(missing_ok=True)
        options = f"-h {self.host} -p {self.pg_port} -k {data}"
        subprocess.run(
            self._as_db_owner(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(self.pg_dir / "postgres.log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
            text=True,
        )
        env = {**os.environ, "PGPASSWORD": password}
        psql = [
            str(bindir / "psql"),
            "-h",
            self.host,
            "-p",
            str(self.pg_port),
            "-U",
            DB_USER,
            "-v",
            "ON_ERROR_STOP=1",
            "-tA",
        ]
        existing = subprocess.run(
            [*psql, "-d", "postgres", "-c", "SELECT datname FROM pg_database"],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout.split()
        for name in DATABASES:
            if name not in existing:
                subprocess.run(
                    [*psql, "-d", "postgres", "-c", f"CREATE DATABASE {name}"],
                    check=True,
                    capture_output=True,
                    env=env,
                )
        # Prefect's server needs trigram indexes for its search.
        subprocess.run(
            [*psql, "-d", "prefect", "-c", "CREATE EXTENSION IF NOT EXISTS pg_trgm"],
            check=True,
            capture_output=True,
            env=env,
        )

    def psql(self, database: str, sql: str) -> str:
        """Run one SQL statement as the stack's database user; return its unaligned output."""
        return self._db_client("psql", "-d", database, "-tA", "-c", sql)

    def pg_dump(self, database: str) -> str:
        """A database as SQL text (to check what the servers stored)."""
        return self._db_client("pg_dump", "--no-owner", database)

    def _db_client(self, program: str, *args: str) -> str:
        bindir = postgres_bin()
        assert bindir is not None
        return subprocess.run(
            [
                str(bindir / program),
                "-h",
                self.host,
                "-p",
                str(self.pg_port),
                "-U",
                DB_USER,
                *args,
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PGPASSWORD": self._password()},
        ).stdout.strip()

    # --------------------------------------------------------------------------- servers

    def _start_server(self, service: str, port: int, env: dict[str, str]) -> None:
        command = SERVER_COMMANDS[service]
        binary = Path(sys.executable).with_name(command[0])  # this environment's `prefect`
        argv = [str(binary) if binary.exists() else command[0], *command[1:]]
        log = open(self.state / f"{service}.log", "ab")  # noqa: SIM115 - the child keeps it
        process = subprocess.Popen(
            argv,
            env={**os.environ, **QUIET, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: `down` stops it and its children
            cwd=self.state,
        )
        log.close()
        self.pids[service] = process.pid
        self._save()
        url = f"http://{self.host}:{port}{HEALTH_PATHS[service]}"
        try:
            wait_healthy(url, timeout=180, process=process)
        except (RuntimeError, TimeoutError) as exc:
            tail = (self.state / f"{service}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{service} did not start: {exc}\n{tail}") from None

    def up(self) -> Stack:
        """Start PostgreSQL (a cluster of its own in the state folder) and both servers."""
        self.state = Path(self.state).resolve()
        self.state.mkdir(parents=True, exist_ok=True)
        self.state.chmod(0o755)  # the `postgres` user must reach its cluster folder
        self.pg_port = self.pg_port or free_port()
        self.prefect_port = self.prefect_port or free_port()
        self.mlflow_port = self.mlflow_port or free_port()
        self.artifacts.mkdir(exist_ok=True)
        (self.state / "prefect-home").mkdir(exist_ok=True)
        password = self._password()
        self._start_postgres(password)
        self.pids["postgres"] = -1  # stopped with pg_ctl, not a signal
        self._save()
        urls = database_urls(password, self.host, self.pg_port)
        self._start_server(
            "prefect-server",
            self.prefect_port,
            {
                "PREFECT_HOME": str(self.state / "prefect-home"),
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": urls[
                    "PREFECT_SERVER_DATABASE_CONNECTION_URL"
                ],
                **server_env("prefect-server", self.host, self.prefect_port),
            },
        )
        self._start_server(
            "mlflow",
            self.mlflow_port,
            {
                "MLFLOW_BACKEND_STORE_URI": urls["MLFLOW_BACKEND_STORE_URI"],
                **server_env("mlflow", self.host, self.mlflow_port, str(self.artifacts)),
            },
        )
        return self

    def down(self) -> None:
        """Stop the servers (their whole process groups), then PostgreSQL."""
        for service, pid in list(self.pids.items()):
            if pid <= 0:
                continue
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                del self.pids[service]
                continue
            deadline = time.time() + 30
            while time.time() < deadline and _running(pid):
                time.sleep(0.2)
            try:  # whatever of its group is left (or all of it, past the deadline)
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _running(pid)
            del self.pids[service]
        bindir = postgres_bin()
        data = self.pg_dir / "data"
        if bindir is not None and (data / "postmaster.pid").exists():
            subprocess.run(
                self._as_db_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
                capture_output=True,
            )
        self.pids.pop("postgres", None)
        self._save()

    def _save(self) -> None:
        self.record.write_text(
            json.dumps(
                {
                    "pg_port": self.pg_port,
                    "prefect_port": self.prefect_port,
                    "mlflow_port": self.mlflow_port,
                    "host": self.host,
                    "pids": self.pids,
                },
                indent=2,
            )
        )

    @classmethod
    def load(cls, state: Path) -> Stack:
        record = json.loads((Path(state) / "stack.json").read_text())
        return cls(Path(state).resolve(), **record)


def _running(pid: int) -> bool:
    """Whether a process still runs; reaps it when it is our child (a zombie does not run)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # not our child: ask /proc
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.stack", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "env"])
    parser.add_argument("--dir", required=True, help="state folder (database, artifacts, logs)")
    parser.add_argument("--pg-port", type=int, default=0)
    parser.add_argument("--prefect-port", type=int, default=4200)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    args = parser.parse_args(argv)
    if args.action == "up":
        stack = Stack(Path(args.dir), args.pg_port, args.prefect_port, args.mlflow_port).up()
    else:
        stack = Stack.load(Path(args.dir))
        if args.action == "down":
            stack.down()
            print(f"stopped the stack in {stack.state}", file=sys.stderr)
            return 0
    for key, value in stack.client_env().items():
        print(f"export {key}={value}")
    if args.action == "up":
        print(
            f"# Prefect UI {stack.ui_urls()['prefect']}, MLflow UI {stack.ui_urls()['mlflow']}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
