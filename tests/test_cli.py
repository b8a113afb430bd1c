"""The `crmflow` command as users run it: real processes, real ports."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from crmflow.redis_server import free_port
from tests.support import REPO


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CRMFLOW_") and k != "REDIS_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO)  # this checkout's code, whatever an editable install names
    return env


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port something listens on, for as long as the block runs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def _crmflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crmflow.cli", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=60, check=False)


def test_bad_config_stops_start_up_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("triggers:\n  abandoned_cart:\n    delay: soon\ndataflow:\n  buckets: 0\n")
    for command in ("config", "api", "dataflow"):
        result = _crmflow(command, "--config", str(config), cwd=tmp_path)
        assert result.returncode != 0
        assert "triggers.abandoned_cart.delay: invalid duration 'soon'" in result.stderr
        assert "dataflow.buckets" in result.stderr


def test_config_prints_effective_values_with_partial_file(tmp_path: Path) -> None:
    config = tmp_path / "part.yaml"
    config.write_text("triggers:\n  abandoned_cart:\n    delay: 30m\n")
    result = _crmflow("config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["triggers"]["abandoned_cart"]["delay"] == 1800.0
    assert effective["triggers"]["abandoned_browse"]["delay"] == 7200.0


@pytest.mark.parametrize(("text", "expected"), [
    ("triggers:\n  abandoned_cart:\n    delai: 1h\n",
     "triggers.abandoned_cart.delai: unknown setting"),
    ("triggers:\n  feedback_request:\n    delay: -7d\n",
     "triggers.feedback_request.delay: duration must not be negative: '-7d'"),
    ("triggers:\n  birthdy:\n    enabled: true\n",
     "triggers.birthdy: unknown trigger type 'birthdy'"),
    ("policy:\n  priority: [welcome, anniversary]\n",
     "policy.priority.1: unknown trigger type 'anniversary'"),
    ("policy:\n  quiet_hours: 21-9\n", "policy.quiet_hours: expected a time of day HH:MM"),
])
def test_check_config_rejects_naming_the_field(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = _crmflow("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    assert result.stdout == ""


def test_check_config_accepts_the_documented_defaults_and_partial_files(tmp_path: Path) -> None:
    defaults = Path(__file__).resolve().parents[1] / "config" / "default.yaml"
    result = _crmflow("check-config", "--config", str(defaults), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
    config = tmp_path / "mine.yaml"
    config.write_text("policy:\n  quiet_hours: null\n  frequency_cap_per_day: 0\n"
                      "triggers:\n  birthday:\n    offset: 3d\n")
    result = _crmflow("check-config", "--config", str(config), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
    assert _crmflow("check-config", cwd=tmp_path).stdout == "ok\n"  # no file: the defaults


def test_api_refuses_to_start_without_keys(tmp_path: Path) -> None:
    result = _crmflow("api", cwd=tmp_path)
    assert result.returncode != 0 and "api.write_keys" in result.stderr


def test_replay_refuses_a_process_worker_or_batch_count_below_one(tmp_path: Path) -> None:
    for option in ("--processes", "--workers", "--batch-size"):
        for value, words in (("0", "must be at least 1, not 0"),
                             ("-5", "must be at least 1, not -5"),
                             ("two", "not a whole number")):
            result = _crmflow("replay", "x.jsonl", "--format", "events", "--out", "out",
                              option, value, cwd=tmp_path)
            assert result.returncode == 2, (option, value, result.stderr)
            assert f"argument {option}: {words}" in result.stderr
            assert "Traceback" not in result.stderr


def test_replay_settings_refuse_counts_below_one_instead_of_the_default(
        redis_url: str) -> None:
    from history.replay import replay_settings
    from tests.support import make_settings

    settings = make_settings(redis_url, "unused")
    chosen = replay_settings(settings, redis_url, "r", workers=None, batch_size=7).dataflow
    assert (chosen.workers, chosen.batch_size) == (settings.dataflow.workers, 7)
    for workers, batch_size in ((0, None), (None, 0), (-1, None)):
        with pytest.raises(ValueError, match="must be at least 1"):
            replay_settings(settings, redis_url, "r", workers=workers, batch_size=batch_size)


def test_as_of_takes_iso_8601_or_epoch_seconds() -> None:
    from crmflow.cli import _as_of

    assert _as_of("2024-03-01T00:00:00Z") == _as_of("1709251200") == 1709251200.0
    assert _as_of(" 1709251200.5 ") == _as_of("1709251200500") == 1709251200.5  # ms too
    assert _as_of("20240301") == 1709251200.0  # ISO's basic form is still a date
    assert _as_of(None) is None
    for text, words in (("yesterday", "not an ISO-8601 time: 'yesterday'"),
                        ("12", "time out of range"), ("nan", "time out of range")):
        with pytest.raises(SystemExit, match=words):
            _as_of(text)


def test_replay_takes_an_epoch_as_of(tmp_path: Path) -> None:
    orders = tmp_path / "orders.csv"
    orders.write_text("client_id,timestamp,amount\n1,2024-01-01T10:00:00Z,5\n")
    result = _crmflow("replay", str(orders), "--format", "orders", "--out", "out",
                      "--as-of", "1709251200", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2024-03-01T00:00:00" in result.stdout


@pytest.mark.slow
def test_up_demo_shows_triggers_and_stops_cleanly(tmp_path: Path) -> None:
    """What `make run` does: embedded Redis, dataflow, API and demo shoppers."""
    config = tmp_path / "up.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"embedded_port": free_port(), "data_dir": str(tmp_path / "redis")},
        "api": {"port": free_port()},
        "dataflow": {"metrics_port": free_port(), "allowed_lateness": "1s"},
        "triggers": {"abandoned_cart": {"delay": "3s"}, "abandoned_browse": {"delay": "3s"}},
        "demo": {"events_per_second": 150},
    }))
    process = subprocess.Popen(
        [sys.executable, "-m", "crmflow.cli", "up", "--demo", "--config", str(config)],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen: set[str] = set()
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not {"abandoned_cart", "welcome",
                                                   "order_confirmation"} <= seen:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            words = line.split()
            if len(words) > 1:
                seen.add(words[1])
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    output = "".join(lines)
    assert "crmflow is up" in output and "Write key" in output
    assert {"abandoned_cart", "welcome", "order_confirmation"} <= seen, output[-2000:]
    assert process.returncode == 0
    assert (tmp_path / "var" / "keys.json").exists()
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "redis")], capture_output=True,
                              check=False)
    assert leftover.stdout == b"", "the embedded redis-server was left running"


def test_api_refuses_a_layout_other_than_the_data_has(tmp_path: Path, redis_url: str,
                                                      key_prefix: str) -> None:
    import redis as redis_lib

    from sinks.keys import KeyLayout, claim_layout

    client = redis_lib.Redis.from_url(redis_url)
    claim_layout(client, KeyLayout(key_prefix, 4, 1024))
    client.close()
    config = tmp_path / "other.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"url": redis_url, "key_prefix": key_prefix},
        "api": {"write_keys": ["w"], "read_keys": ["r"], "port": free_port()},
        "dataflow": {"buckets": 2048}}))
    result = _crmflow("api", "--config", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert "dataflow.buckets is 2048" in result.stderr
    # a backfill would strand events in streams no dataflow reads, an export read a part;
    # the dataflow refuses it too, in one line (it printed a traceback)
    orders = tmp_path / "orders.csv"
    orders.write_text("client_id,timestamp,amount\nc1,2024-01-01T00:00:00,5\n")
    for verb in (["backfill", str(orders), "--format", "orders", "--no-wait"],
                 ["export", "--out", str(tmp_path / "out")], ["dataflow"]):
        result = _crmflow(*verb, "--config", str(config), cwd=tmp_path)
        assert result.returncode == 1, (verb, result.stderr)
        assert f"crmflow {verb[0]}: dataflow.buckets is 2048" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_dataflow_process_waiting_for_its_peers_stops_on_sigterm(
        tmp_path: Path, redis_url: str, key_prefix: str) -> None:
    """Process 0 of two on other hosts waits for process 1 inside Bytewax's Rust code, where
    a Python signal handler never gets its turn: `docker stop` must not need SIGKILL."""
    from crmflow.redis_server import free_ports

    base = free_ports(2)
    config = tmp_path / "peers.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"url": redis_url, "key_prefix": key_prefix},
        "dataflow": {"metrics_port": 0, "process_id": 0,
                     "addresses": [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]}}))
    process = subprocess.Popen([sys.executable, "-m", "crmflow.cli", "dataflow", "--config",
                                str(config)], cwd=tmp_path, env=_env(),
                               stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)  # started, and waiting for process 1
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
            pytest.fail("the dataflow process ignored SIGTERM while waiting for its peer")
    assert process.returncode == 0


def test_config_and_the_up_banner_never_print_the_redis_password(tmp_path: Path) -> None:
    from config.settings import load_settings, redacted_url
    from crmflow.supervisor import _banner

    url = "redis://default:s3cret-pw@redis.example:6379/0"
    config = tmp_path / "remote.yaml"
    config.write_text(yaml.safe_dump({"redis": {"url": url}}))
    result = _crmflow("config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["redis"]["url"] == (
        "redis://default:***@redis.example:6379/0")
    banner = _banner(load_settings(config), "http://127.0.0.1:8000", False, False)
    assert "s3cret-pw" not in banner and "redis://default:***@redis.example:6379/0" in banner
    assert redacted_url("redis://:pw@h/0") == "redis://:***@h/0"
    assert redacted_url("unix:///run/r.sock?db=1&password=pw") == (
        "unix:///run/r.sock?db=1&password=***")
    assert redacted_url("redis://127.0.0.1:6390/0") == "redis://127.0.0.1:6390/0"


def test_verbs_say_redis_is_unreachable_instead_of_a_traceback(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = tmp_path / "away.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"url": f"redis://:s3cret@127.0.0.1:{port}/0", "socket_timeout": "1s"},
        "api": {"write_keys": ["w"], "read_keys": ["r"], "port": free_port()}}))
    for verb in (["api"], ["export", "--out", "out"]):
        result = _crmflow(*verb, "--config", str(config), cwd=tmp_path)
        assert result.returncode == 1, (verb, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert f"crmflow {verb[0]}: Redis is unavailable" in result.stderr, result.stderr
        assert f"127.0.0.1:{port}" in result.stderr and "s3cret" not in result.stderr


@pytest.mark.parametrize(("options", "words"), [
    (["--addresses", "127.0.0.1:1;127.0.0.1:2", "--process-id", "2"],
     "--process-id must be this process's index among the 2 --addresses (0..1), got 2"),
    (["--addresses", "127.0.0.1:1;127.0.0.1:2"], "(0..1), got None"),
    (["--addresses", "127.0.0.1:1", "--process-id", "-1"], "(0..0), got -1"),
    (["--process-id", "1"], "--process-id needs --addresses"),
])
def test_dataflow_refuses_a_process_id_outside_its_addresses(
        tmp_path: Path, redis_url: str, key_prefix: str, options: list[str],
        words: str) -> None:
    """Bytewax would wait for ever for a peer that cannot exist, or (without addresses) run
    alone over every partition."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"redis": {"url": redis_url, "key_prefix": key_prefix},
                                      "dataflow": {"metrics_port": 0}}))
    result = subprocess.run([sys.executable, "-m", "crmflow.cli", "dataflow", "--config",
                             str(config), *options], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 1 and words in result.stderr, result.stderr


def test_up_refuses_to_start_beside_a_running_one(tmp_path: Path) -> None:
    """A second `make run` answered its health check with the first one's API, printed
    "crmflow is up" and restarted its own parts (which could not listen) for ever."""
    with taken_port() as port:
        config = tmp_path / "up.yaml"
        config.write_text(yaml.safe_dump({
            "redis": {"embedded_port": free_port(), "data_dir": str(tmp_path / "redis")},
            "api": {"port": port}, "dataflow": {"metrics_port": free_port()}}))
        result = _crmflow("up", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert f"crmflow up: 127.0.0.1:{port} (api.port) is not free" in result.stderr
    assert "crmflow is up" not in result.stdout
    assert not (tmp_path / "redis").exists()  # refused before starting anything


def test_backfill_refuses_a_negative_or_non_finite_wait(tmp_path: Path) -> None:
    """`--wait -5` (or nan) waited without any limit, as 0 does."""
    for value in ("-5", "nan", "inf", "soon"):
        result = _crmflow("backfill", "x.jsonl", "--format", "events", "--wait", value,
                          cwd=tmp_path)
        assert result.returncode == 2, (value, result.stderr)
        assert "argument --wait:" in result.stderr and "Traceback" not in result.stderr


def test_the_embedded_redis_does_not_wait_for_ever_on_a_port_that_never_answers(
        tmp_path: Path) -> None:
    """Something other than Redis listens on redis.embedded_port and never replies: the
    start-up ping waited for its reply for ever, so the failed server was never noticed."""
    from crmflow.redis_server import EmbeddedRedis

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=f"redis-server on port {port} exited"):
            EmbeddedRedis(tmp_path / "mine", port=port).start(timeout=10)
        assert time.monotonic() - started < 10


def test_the_embedded_redis_never_passes_another_server_for_its_own(tmp_path: Path) -> None:
    """Another Redis on redis.embedded_port (not serving our folder) answered the new
    server's first ping before it failed to bind: crmflow then ran on that server."""
    from crmflow.redis_server import EmbeddedRedis

    foreign = EmbeddedRedis(tmp_path / "foreign", port=0)
    foreign.start()
    try:
        mine = EmbeddedRedis(tmp_path / "mine", port=foreign.port)
        with pytest.raises(RuntimeError, match=f"redis-server on port {foreign.port} exited"):
            mine.start()
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({
            "redis": {"embedded_port": foreign.port, "data_dir": str(tmp_path / "ours")},
            "api": {"write_keys": ["w"], "read_keys": ["r"], "port": free_port()}}))
        result = _crmflow("api", "--config", str(config), cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert (f"crmflow: the embedded Redis (redis.embedded_port {foreign.port}, "
                in result.stderr), result.stderr
        assert "Traceback" not in result.stderr
        assert foreign.alive()
    finally:
        foreign.stop()


def test_a_second_embedded_redis_is_refused_a_data_folder_another_one_serves(
        tmp_path: Path) -> None:
    """Configured with another port, a second server started on the first's folder and
    saved over its dump.rdb at its exit. The lock is the server's: it holds when the
    process that started the server has gone, and goes with the server."""
    from crmflow.redis_server import EmbeddedRedis

    folder = tmp_path / "data"
    starter = subprocess.run([sys.executable, "-c", (
        "import os, sys; from pathlib import Path; "
        "from crmflow.redis_server import EmbeddedRedis; "
        f"server = EmbeddedRedis(Path({str(folder)!r})); server.start(); "
        "print(server.port, flush=True); os._exit(0)")], env=_env(), capture_output=True,
        text=True, timeout=60, check=True)
    port = int(starter.stdout)
    try:
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({
            "redis": {"embedded_port": free_port(), "data_dir": str(folder)},
            "api": {"write_keys": ["w"], "read_keys": ["r"], "port": free_port()}}))
        result = _crmflow("api", "--config", str(config), cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert (f"another redis-server serves {folder.resolve()} (port {port}): use its "
                "port, or another data folder") in result.stderr, result.stderr
    finally:
        redis.Redis(port=port).shutdown(nosave=True)
    deadline = time.monotonic() + 10
    while True:  # the lock goes with the server
        try:
            again = EmbeddedRedis(folder)
            again.start()
            break
        except RuntimeError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    again.stop()


def test_a_killed_embedded_redis_can_be_restarted_while_its_save_still_runs(
        tmp_path: Path) -> None:
    """A background save's fork inherits the folder's lock and outlives a killed server:
    `crmflow up` restarting it was refused the folder (by the dead server's port) and
    exited. The lock is now waited for while no server answers on the holder's port."""
    from crmflow.redis_server import EmbeddedRedis

    folder = tmp_path / "data"
    first = EmbeddedRedis(folder)
    first.start()
    client = redis.Redis(port=first.port)
    client.mset({f"k{n}": n for n in range(20)})
    client.config_set("rdb-key-save-delay", 150_000)  # µs a key: a save of about 3 s
    client.bgsave()
    client.close()
    first.kill()  # its save's fork goes on, holding the lock
    started = time.monotonic()
    second = EmbeddedRedis(folder)
    second.start()
    try:
        assert time.monotonic() - started < 60
    finally:
        second.stop()


def test_up_stopped_while_starting_stops_at_once_without_saying_it_is_up(
        tmp_path: Path) -> None:
    """SIGTERM during start-up waited for the API to be healthy, printed "crmflow is up",
    and only then stopped."""
    config = tmp_path / "up.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"embedded_port": free_port(), "data_dir": str(tmp_path / "redis")},
        "api": {"port": free_port()}, "dataflow": {"metrics_port": free_port()}}))
    process = subprocess.Popen(
        [sys.executable, "-m", "crmflow.cli", "up", "--config", str(config)],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and subprocess.run(
            ["pgrep", "-f", f"crmflow.child api --config {config}"], capture_output=True,
            check=False).returncode != 0:
        time.sleep(0.05)  # until the API has been started, and is not healthy yet
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert "crmflow is up" not in output
    leftover = subprocess.run(["pgrep", "-f", str(config)], capture_output=True, check=False)
    assert leftover.stdout == b"", "a part was left running"


def _ignores_sigint(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    ignored = next(line for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(ignored.split()[1], 16) & (1 << (signal.SIGINT - 1)))


def test_a_part_of_up_leaves_ctrl_c_to_its_parent(tmp_path: Path) -> None:
    """Ctrl-C in a terminal reaches the whole foreground process group. A part of `crmflow
    up` still importing died of it, with the import's traceback on the terminal, while `up`
    was stopping it anyway: a part ignores SIGINT (its parent stops it with SIGTERM). Here a
    part's verb is interrupted from its first instant to its end, and runs to its end."""
    from crmflow.supervisor import CHILD_ENTRY

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:  # a handler, not SIG_IGN, so the part starts with SIGINT's default, as under a shell
        process = subprocess.Popen([sys.executable, "-m", CHILD_ENTRY, "config"], cwd=tmp_path,
                                   env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 10
    while not _ignores_sigint(process.pid) and process.poll() is None:
        assert time.monotonic() < deadline, "the part never ignored SIGINT"
        time.sleep(0.005)  # the interpreter's own start-up: a SIGINT there ends it silently
    assert process.poll() is None, "the part ended before it ignored SIGINT"
    while process.poll() is None:
        process.send_signal(signal.SIGINT)
        time.sleep(0.02)
    output, errors = process.communicate()
    assert process.returncode == 0, errors[-2000:]
    assert "Traceback" not in errors
    assert "redis:" in output  # the verb ran to its end


@pytest.mark.parametrize("text", ["", "[\"wk_x\"]", "{\"write_key\": "])
def test_up_says_what_is_wrong_with_its_keys_file(tmp_path: Path, text: str) -> None:
    """An emptied or foreign var/keys.json stopped `make run` with a traceback."""
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "keys.json").write_text(text)
    config = tmp_path / "up.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"embedded_port": free_port(), "data_dir": str(tmp_path / "redis")},
        "api": {"port": free_port()}, "dataflow": {"metrics_port": free_port()}}))
    result = _crmflow("up", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "crmflow up: var/keys.json is not the JSON object of keys it wrote" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "var" / "keys.json").read_text() == text  # the keys are not replaced


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    history = tmp_path / "h.csv"
    history.write_text("client_id,timestamp,amount\nc1,2024-01-01T00:00:00,5\n")
    for verb in (["replay", str(history), "--format", "orders"], ["export"]):
        result = _crmflow(*verb, "--out", str(taken), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"{taken} is a file, not a folder" in result.stderr
        assert "Traceback" not in result.stderr


def test_replay_runs_under_a_live_configuration_of_a_cluster_and_bytewax_metrics(
        tmp_path: Path) -> None:
    """The replay's Redis is a server of its own: the live configuration's cluster mode and
    Bytewax metrics port (its dataflow runs twice in one process) must not reach it."""
    config = tmp_path / "live.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"url": "redis://127.0.0.1:7000/0", "cluster": True},
        "dataflow": {"bytewax_metrics_port": free_port()}}))
    history = tmp_path / "orders.csv"
    history.write_text("client_id,timestamp,amount\nc1,2024-01-01T00:00:00,5\n"
                       "c1,2024-02-01T00:00:00,7\n")
    result = _crmflow("replay", str(history), "--format", "orders", "--out",
                      str(tmp_path / "out"), "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "profiles.parquet").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_replay_stopped_by_a_signal_says_so_without_a_traceback(
        tmp_path: Path, signum: int) -> None:
    history = tmp_path / "orders.csv"
    with history.open("w") as handle:
        handle.write("client_id,timestamp,amount\n")
        for n in range(300_000):
            handle.write(f"c{n % 50_000},2024-01-{1 + n % 28:02d}T00:00:{n % 60:02d},{n % 90}\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "crmflow.cli", "replay", str(history), "--format", "orders",
         "--out", str(tmp_path / "out")], cwd=tmp_path, env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    assert process.poll() is None, "the replay ended before it could be stopped"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr
    assert f"crmflow replay: stopped by {signal.Signals(signum).name}" in stderr
    assert "Traceback" not in stderr


def test_a_taken_port_is_named_and_ends_the_process(tmp_path: Path, redis_url: str,
                                                    key_prefix: str) -> None:
    """`crmflow api` on a taken port waited for ever (uvicorn failed to bind, then its
    shutdown waited on the console's recorder); the dataflow printed a traceback."""
    with taken_port() as port:
        config = tmp_path / "taken.yaml"
        config.write_text(yaml.safe_dump({
            "redis": {"url": redis_url, "key_prefix": key_prefix},
            "api": {"write_keys": ["w"], "read_keys": ["r"], "port": port},
            "dataflow": {"metrics_port": port}}))
        for verb, setting in (("api", "api.port"), ("dataflow", "dataflow.metrics_port")):
            result = _crmflow(verb, "--config", str(config), cwd=tmp_path)
            assert result.returncode == 1, (verb, result.stderr)
            assert f"crmflow {verb}: 127.0.0.1:{port} ({setting}) is not free" in result.stderr
            assert "Traceback" not in result.stderr


def test_tail_into_a_reader_that_stops_early_exits_quietly(tmp_path: Path, redis_url: str,
                                                           key_prefix: str) -> None:
    """`crmflow tail | head -1`: the pipe closes under the next print, which must end the
    command with status 0 and no traceback, not a BrokenPipeError."""
    import redis as redis_lib

    from sinks.keys import KeyLayout

    layout = KeyLayout(key_prefix, 4, 1024)
    client = redis_lib.Redis.from_url(redis_url)
    for n in range(2_000):  # more than a pipe buffers, so a print meets the closed pipe
        client.xadd(layout.triggers(n % 4), {
            "fired_at": "2024-01-01T00:00:00Z", "type": "abandoned_cart", "status": "sent",
            "channel": "email", "client_id": f"c{n}", "payload": "{}"})
    client.close()
    config = tmp_path / "tail.yaml"
    config.write_text(yaml.safe_dump({"redis": {"url": redis_url, "key_prefix": key_prefix}}))
    tail = subprocess.Popen(
        [sys.executable, "-m", "crmflow.cli", "tail", "--from-start", "--config", str(config)],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert tail.stdout is not None and tail.stderr is not None
    first = tail.stdout.readline()
    tail.stdout.close()  # what `head -1` does after its line
    try:
        status = tail.wait(timeout=30)
    finally:
        tail.kill()
    stderr = tail.stderr.read().decode()
    assert b"abandoned_cart" in first
    assert status == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_tail_from_now_shows_every_partitions_triggers(redis_url: str, key_prefix: str,
                                                       capfd: pytest.CaptureFixture[str]
                                                       ) -> None:
    """From now, each stream starts at its own last id: with `$` a stream kept `$` until it
    answered a read, and the triggers written to it between two reads of the others were
    never shown (a burst over 4 partitions printed one partition's quarter)."""
    import threading

    import redis as redis_lib

    from config.settings import Settings
    from crmflow.supervisor import tail_triggers
    from sinks.keys import KeyLayout

    settings = Settings(redis={"url": redis_url, "key_prefix": key_prefix})
    layout = KeyLayout.from_settings(settings)
    client = redis_lib.Redis.from_url(redis_url)
    client.xadd(layout.triggers(0), {"type": "welcome", "client_id": "before"})  # not shown
    stop = threading.Event()
    tailing = threading.Thread(target=tail_triggers, args=(settings,), kwargs={"stop": stop},
                               daemon=True)
    tailing.start()
    time.sleep(0.5)  # tail has taken its positions
    for n in range(40):
        client.xadd(layout.triggers(n % 4), {"type": "welcome", "client_id": f"c{n}"})
        if n % 4 == 3:
            time.sleep(0.05)
    deadline = time.monotonic() + 10
    seen: set[str] = set()
    while len(seen) < 40 and time.monotonic() < deadline:
        time.sleep(0.2)
        seen.update(re.findall(r"client=(c\d+)", capfd.readouterr().out))
    stop.set()
    tailing.join(5)
    client.close()
    assert seen == {f"c{n}" for n in range(40)}


def test_tail_marks_a_follow_up(redis_url: str, key_prefix: str,
                                capfd: pytest.CaptureFixture[str]) -> None:
    """A follow-up is recorded with its occasion's type: the line says which it is."""
    import threading

    import redis as redis_lib

    from config.settings import Settings
    from crmflow.supervisor import tail_triggers
    from sinks.keys import KeyLayout

    settings = Settings(redis={"url": redis_url, "key_prefix": key_prefix})
    layout = KeyLayout.from_settings(settings)
    client = redis_lib.Redis.from_url(redis_url)
    client.xadd(layout.triggers(0), {"type": "abandoned_cart", "status": "sent",
                                     "channel": "email", "client_id": "first",
                                     "payload": '{"items": []}'})
    client.xadd(layout.triggers(0), {"type": "abandoned_cart", "status": "sent",
                                     "channel": "sms", "client_id": "again",
                                     "payload": '{"items": [], "follow_up_of": "t1"}'})
    client.close()
    stop = threading.Event()
    tailing = threading.Thread(target=tail_triggers, args=(settings,),
                               kwargs={"stop": stop, "from_start": True}, daemon=True)
    tailing.start()
    lines: dict[str, str] = {}
    deadline = time.monotonic() + 10
    while len(lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        lines.update((m.group(1), m.group(0)) for m in re.finditer(
            r"^.*client=(\w+).*$", capfd.readouterr().out, re.MULTILINE))
    stop.set()
    tailing.join(5)
    assert "follow-up" not in lines["first"]
    assert "abandoned_cart follow-up" in lines["again"] and "sent via sms" in lines["again"]
