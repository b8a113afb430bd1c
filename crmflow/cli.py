"""The `crmflow` command: up, api, dataflow, deliver, demo, tail, replay, backfill, export,
redrive, config, check-config."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
import yaml

from config.settings import ConfigError, Settings, load_settings, parse_yaml, redacted_url
from crmflow.parent_watch import stop_with_parent

if TYPE_CHECKING:
    from crmflow.runtime import EmbeddedLease

KEYS_FILE = Path("var/keys.json")
# `backfill --wait N`: the history is appended, but the dataflow had not applied it all
BACKFILL_NOT_APPLIED = 3
REDRIVE_INCOMPLETE = 3  # crmflow redrive skipped partitions the dataflow is behind on


def _overlays(demo: bool) -> tuple[dict[str, Any], ...]:
    if not demo:
        return ()
    from importlib import resources

    text = resources.files("config").joinpath("demo.yaml").read_text(encoding="utf-8")
    data = parse_yaml(text)
    return (data,) if isinstance(data, dict) else ()


def settings_from(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(args.config, overlays=_overlays(getattr(args, "demo", False)))
    except ConfigError as exc:
        raise SystemExit(f"crmflow: {exc}") from None


def _cmd_api(args: argparse.Namespace) -> None:
    import uvicorn

    from api.app import create_app, freeze_startup_objects
    from crmflow.runtime import check_api_keys, with_redis
    from crmflow.supervisor import check_ports_free

    settings = settings_from(args)
    check_api_keys(settings)
    # before anything starts: uvicorn, failing to bind, waited for ever on the lifespan
    check_ports_free("api", [(settings.api.host, settings.api.port, "api.port")])
    settings, lease = with_redis(settings)
    _claim_layout(settings, lease, "api")
    try:
        app = create_app(settings)
        freeze_startup_objects()
        uvicorn.run(app, host=settings.api.host, port=settings.api.port,
                    log_level="warning", access_log=False)
    finally:
        if lease is not None:
            lease.release()


def _window(text: str) -> float:
    from config.durations import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text!r}")
    return seconds


def output_folder(text: str) -> Path:
    """--out: a folder, new or existing, refused before any work when it is a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return path


def _claim_layout(settings: Settings, lease: EmbeddedLease | None, verb: str) -> None:
    """Refuse to start on data laid out with other partition or bucket counts: routing
    depends on both, so an API, a backfill or an export with other counts would write
    events to streams no dataflow reads, or read a part of the clients."""
    from sinks.keys import KeyLayout, LayoutMismatch, claim_layout
    from sinks.redis_client import sync_client

    client = sync_client(settings.redis)
    try:
        claim_layout(client, KeyLayout.from_settings(settings))
    except LayoutMismatch as exc:
        if lease is not None:
            lease.release()
        raise SystemExit(f"crmflow {verb}: {exc}") from None
    finally:
        client.close()


def _check_process_id(process_id: int | None, addresses: str | None) -> None:
    """Bytewax waits for ever for peers that cannot exist: refuse such a pair at once."""
    if addresses is None:
        if process_id is not None:
            raise SystemExit("crmflow dataflow: --process-id needs --addresses (the host:port "
                             "of every process, separated by ';')")
        return
    count = len(addresses.split(";"))
    if process_id is None or not 0 <= process_id < count:
        raise SystemExit(f"crmflow dataflow: --process-id must be this process's index among "
                         f"the {count} --addresses (0..{count - 1}), got {process_id}")


def _cmd_dataflow(args: argparse.Namespace) -> None:
    from crmflow.runtime import with_redis
    from dataflows.metrics import PortInUse
    from dataflows.run import run_dataflow
    from sinks.keys import LayoutMismatch

    settings = settings_from(args)
    if args.addresses is None and settings.dataflow.addresses:  # from the configuration
        args.addresses = ";".join(settings.dataflow.addresses)
        args.process_id = (settings.dataflow.process_id if args.process_id is None
                           else args.process_id)
    _check_process_id(args.process_id, args.addresses)
    settings, lease = with_redis(settings)
    if settings.dataflow.processes > 1 and args.addresses is None:
        from crmflow.dataflow_group import run_group

        try:  # the children use the Redis found (or started) here
            code = run_group(settings, args.config, demo=getattr(args, "demo", False),
                             drain=args.drain)
        finally:
            if lease is not None:
                lease.release()
        sys.exit(code)
    addresses = args.addresses.split(";") if args.addresses else None

    def exit_now() -> None:
        # Raising inside Bytewax's Rust loop panics; the dataflow keeps nothing of its own
        # (Redis holds state and positions), so it may simply stop here.
        if lease is not None:
            lease.release()
        os._exit(0)

    exit_on_signal(exit_now)
    try:
        run_dataflow(settings, process_id=args.process_id, addresses=addresses,
                     stop_when_caught_up=args.drain or args.drain_round,
                     drain_rounds=1 if args.drain_round else 0)
    except (LayoutMismatch, PortInUse) as exc:  # expected conditions: a line, no traceback
        raise SystemExit(f"crmflow dataflow: {exc}") from None
    finally:
        if lease is not None:
            lease.release()


def _cmd_deliver(args: argparse.Namespace) -> None:
    from crmflow.deliver import run_deliver
    from crmflow.runtime import with_redis
    from crmflow.supervisor import check_ports_free
    from dataflows.metrics import PortInUse

    settings = settings_from(args)
    hooks = settings.webhooks
    if not hooks.endpoints:
        raise SystemExit("crmflow deliver: webhooks.endpoints is empty: there is nothing to "
                         "deliver (see README, Webhooks)")
    _check_webhook_secrets(settings)
    if hooks.metrics_port:
        check_ports_free("deliver", [(hooks.metrics_host, hooks.metrics_port,
                                      "webhooks.metrics_port")])
    settings, lease = with_redis(settings)
    _claim_layout(settings, lease, "deliver")
    try:
        run_deliver(settings)
    except PortInUse as exc:
        raise SystemExit(f"crmflow deliver: {exc}") from None
    except KeyboardInterrupt:  # Ctrl-C before the delivery loop took over the signal
        pass
    finally:
        if lease is not None:
            lease.release()


def _check_webhook_secrets(settings: Settings) -> None:
    """The deliverer's own check: the variables its endpoints' `secret_env` name."""
    try:
        settings.webhooks.check_secrets()
    except ConfigError as exc:
        raise SystemExit(f"crmflow: {exc}") from None


def _cmd_up(args: argparse.Namespace) -> None:
    from crmflow.supervisor import run_up

    settings = settings_from(args)
    _check_webhook_secrets(settings)  # before anything starts: the deliverer would not
    run_up(settings, config_file=args.config, demo=args.demo, keys_file=KEYS_FILE)


def _cmd_demo(args: argparse.Namespace) -> None:
    import threading

    from crmflow.demo import DemoRefused, run_demo

    settings = settings_from(args)
    write_key = args.write_key or (settings.api.write_keys or [""])[0]
    if not write_key:
        raise SystemExit("crmflow demo: give --write-key or set CRMFLOW_WRITE_KEY")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        run_demo(args.url, write_key, events_per_second=settings.demo.events_per_second,
                 shoppers=settings.demo.shoppers, seed=settings.demo.seed, stop=stop)
    except KeyboardInterrupt:
        stop.set()
    except DemoRefused as exc:
        raise SystemExit(f"crmflow demo: {exc}") from None


def _cmd_tail(args: argparse.Namespace) -> None:
    from crmflow.runtime import with_redis
    from crmflow.supervisor import tail_triggers

    settings, lease = with_redis(settings_from(args))
    try:
        tail_triggers(settings, from_start=args.from_start)
    except KeyboardInterrupt:
        pass
    finally:
        if lease is not None:
            lease.release()


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:  # -5 or nan meant "wait without limit"
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or more seconds, not {text}")
    return value


def _as_of(text: str | None, option: str = "--as-of") -> float | None:
    from features.events import EventError, parse_time

    if text is None:
        return None
    try:
        return parse_time(text.strip(), option)
    except EventError as exc:
        error = exc
    try:  # not ISO 8601: epoch seconds (or milliseconds), as the help says
        number = float(text)
    except ValueError:
        raise SystemExit(f"crmflow: {error}") from None
    try:
        return parse_time(number, option)
    except EventError as exc:
        raise SystemExit(f"crmflow: {exc}") from None


def _cmd_replay(args: argparse.Namespace) -> None:
    from history.files import HistoryError
    from history.formats import parse_mapping
    from history.load import Progress
    from history.replay import replay
    from history.replay_group import ReplayGroupError

    settings = settings_from(args)
    for name in ("dataflows", "crmflow.redis_server"):  # the progress line says it better
        logging.getLogger(name).setLevel(logging.WARNING)
    stopped_by: list[int] = []  # the signal, once one arrived

    def stop(signum: int, frame: object) -> None:
        stopped_by.append(signum)  # raised inside Bytewax, it comes back wrapped in its error
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    try:
        result = replay(args.inputs, args.format, args.out, settings, as_of=_as_of(args.as_of),
                        workers=args.workers, batch_size=args.batch_size,
                        mapping=parse_mapping(args.map), strict=args.strict,
                        progress=Progress(), processes=args.processes)
    except (HistoryError, ReplayGroupError) as exc:
        raise SystemExit(f"crmflow replay: {exc}") from None
    except BaseException:
        if not stopped_by:
            raise
        sys.stderr.write(f"\ncrmflow replay: stopped by {signal.Signals(stopped_by[0]).name}; "
                         f"{args.out} may hold a part of the output\n")
        raise SystemExit(128 + stopped_by[0]) from None
    sys.stdout.write("\n".join([*result.summary(), f"written to {args.out}/: "
                                "profiles.parquet, segments.parquet, triggers.parquet"]) + "\n")


def _cmd_backfill(args: argparse.Namespace) -> None:
    from crmflow.runtime import with_redis
    from history.backfill import backfill
    from history.files import HistoryError
    from history.formats import parse_mapping
    from history.load import Progress

    settings, lease = with_redis(settings_from(args))
    _claim_layout(settings, lease, "backfill")
    try:
        result = backfill(args.inputs, args.format, settings, mapping=parse_mapping(args.map),
                          strict=args.strict, wait=None if args.no_wait else args.wait,
                          progress=Progress())
    except HistoryError as exc:
        raise SystemExit(f"crmflow backfill: {exc}") from None
    finally:
        if lease is not None:
            lease.release()
    sys.stdout.write("\n".join(result.summary()) + "\n")
    if result.caught_up is False:  # appended, not yet applied: a script must not go on
        raise SystemExit(BACKFILL_NOT_APPLIED)


def _cmd_export(args: argparse.Namespace) -> None:
    from crmflow.runtime import with_redis
    from history.export import export
    from sinks.parquet_export import AsOfBeforeState

    settings, lease = with_redis(settings_from(args))
    _claim_layout(settings, lease, "export")
    try:
        summary = export(settings, args.out, as_of=_as_of(args.as_of))
    except AsOfBeforeState as exc:
        raise SystemExit(f"crmflow export: --as-of: {exc}") from None
    finally:
        if lease is not None:
            lease.release()
    sys.stdout.write(f"profiles: {summary.profiles:,}; memberships: {summary.memberships:,}; "
                     f"triggers: {summary.triggers:,}\nwritten to {args.out}/: "
                     "profiles.parquet, segments.parquet, triggers/day=YYYY-MM-DD/\n")


def _cmd_uplift(args: argparse.Namespace) -> None:
    from crmflow.runtime import with_redis
    from history.uplift import format_report, uplift

    since, as_of = _as_of(args.since, "--since"), _as_of(args.as_of)
    if as_of is not None and as_of > time.time():  # its windows would be read as closed
        raise SystemExit("crmflow uplift: --as-of is in the future: the windows that close "
                         "after now are still open, their orders yet to come")
    if since is not None and since >= (time.time() if as_of is None else as_of):
        raise SystemExit("crmflow uplift: --since is not before --as-of (default now): no "
                         "occasion could count")
    settings, lease = with_redis(settings_from(args))
    _claim_layout(settings, lease, "uplift")
    try:
        report = uplift(settings, window=args.window, since=since, as_of=as_of)
    finally:
        if lease is not None:
            lease.release()
    sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n" if args.json
                     else format_report(report))


def _cmd_redrive(args: argparse.Namespace) -> None:
    from crmflow.runtime import with_redis
    from dataflows.flow import store_factory
    from sinks.dead_letters import redrive
    from sinks.event_log import AppendOptions, BacklogFull

    settings, lease = with_redis(settings_from(args))
    _claim_layout(settings, lease, "redrive")
    store = store_factory(settings)
    try:
        # an erasure waiting in a partition must apply (and purge the client's dead letters)
        # before that client's failed events could come back after it
        behind = store.partitions_behind(store.stream_heads())
        result = redrive(store.client, store.layout,
                         AppendOptions(0, settings.redis.max_stream_length),
                         dry_run=args.dry_run, behind=behind)
    except BacklogFull as exc:
        raise SystemExit(f"crmflow redrive: {exc} (what was re-driven before stays so; "
                         "run it again later for the rest)") from None
    finally:
        store.client.close()
        if lease is not None:
            lease.release()
    sys.stdout.write("\n".join(result.summary(args.dry_run)) + "\n")
    if result.skipped:
        raise SystemExit(REDRIVE_INCOMPLETE)


def _cmd_config(args: argparse.Namespace) -> None:
    values = settings_from(args).model_dump(mode="json")

    def masked(key: str) -> str:
        return f"***{key[-2:]}" if len(key) > 8 else "***"

    for name in ("write_keys", "read_keys", "admin_keys"):  # never print secrets
        values["api"][name] = [masked(key) for key in values["api"][name]]
    values["api"]["point_read_keys"] = {masked(key): point for key, point
                                        in values["api"]["point_read_keys"].items()}
    if values["redis"]["url"]:  # nor the Redis password
        values["redis"]["url"] = redacted_url(values["redis"]["url"])
    for endpoint in values["webhooks"]["endpoints"]:  # nor a webhook's signing secret
        for field in ("secret", "previous_secret"):
            if endpoint[field] is not None:
                endpoint[field] = masked(endpoint[field])
        endpoint["url"] = redacted_url(endpoint["url"])  # a password in the URL
        endpoint["headers"] = {name: masked(value)  # an API key of the receiver's
                               for name, value in endpoint["headers"].items()}
    sys.stdout.write(yaml.safe_dump(values, sort_keys=False))


def _cmd_check_config(args: argparse.Namespace) -> None:
    settings_from(args)  # exits non-zero, naming every bad field, when it is invalid
    sys.stdout.write("ok\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crmflow", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--config", type=Path, default=None,
                         help="YAML config file (default: $CRMFLOW_CONFIG)")
        return cmd

    up = command("up", "run everything on this machine: Redis, dataflow, API")
    up.add_argument("--demo", action="store_true",
                    help="also play simulated shoppers through the API, with short timings")
    up.set_defaults(func=_cmd_up)

    api = command("api", "run the HTTP API (ingest and profile reads)")
    api.add_argument("--demo", action="store_true", help=argparse.SUPPRESS)
    api.set_defaults(func=_cmd_api)

    dataflow = command("dataflow", "run the Bytewax dataflow")
    dataflow.add_argument("--demo", action="store_true", help=argparse.SUPPRESS)
    dataflow.add_argument("--process-id", type=int, default=None,
                          help="this process's index among --addresses")
    dataflow.add_argument("--addresses", default=None,
                          help="host:port of every dataflow process, separated by ';'")
    dataflow.add_argument("--drain", action="store_true",
                          help="stop once every stream entry has been processed")
    dataflow.add_argument("--drain-round", action="store_true", help=argparse.SUPPRESS)
    dataflow.set_defaults(func=_cmd_dataflow)

    deliver = command("deliver", "POST trigger decisions to the webhook endpoints configured "
                                 "(webhooks.endpoints), until stopped")
    deliver.add_argument("--demo", action="store_true", help=argparse.SUPPRESS)
    deliver.set_defaults(func=_cmd_deliver)

    demo = command("demo", "send simulated shopper traffic to a running API")
    demo.add_argument("--url", default="http://127.0.0.1:8000")
    demo.add_argument("--write-key", default=None)
    demo.set_defaults(func=_cmd_demo)

    tail = command("tail", "print triggers as they are raised")
    tail.add_argument("--from-start", action="store_true", help="print past triggers first")
    tail.set_defaults(func=_cmd_tail)

    def history_input(cmd: argparse.ArgumentParser) -> None:
        from history.formats import FORMATS

        cmd.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                         help="history files (CSV and JSON lines may be gzipped)")
        cmd.add_argument("--format", required=True, choices=FORMATS)
        cmd.add_argument("--map", default=None, metavar="NAME=COLUMN,...",
                         help="orders: the file's column names, e.g. "
                              "client_id=CustomerID,timestamp=InvoiceDate")
        cmd.add_argument("--strict", action="store_true",
                         help="stop at the first bad row (default: skip, count, report)")

    replay_cmd = command("replay", "run the dataflow on event time over history files and "
                                   "write profiles, segments and triggers as Parquet")
    history_input(replay_cmd)
    replay_cmd.add_argument("--out", type=output_folder, required=True, help="output folder")
    replay_cmd.add_argument("--as-of", default=None, metavar="TIME",
                            help="ISO-8601 or epoch seconds (default: the last event's time)")
    replay_cmd.add_argument("--workers", type=_at_least_one, default=None,
                            help="Bytewax workers (default: dataflow.workers)")
    replay_cmd.add_argument("--batch-size", type=_at_least_one, default=None,
                            help="stream entries per read (default: dataflow.batch_size)")
    replay_cmd.add_argument("--processes", type=_at_least_one, default=1,
                            help="dataflow processes, one per core to use (default 1); "
                                 "the output is the same for any number")
    replay_cmd.set_defaults(func=_cmd_replay)

    backfill_cmd = command("backfill", "feed history files through the live dataflow; past "
                                       "occasions are recorded as suppressed (backfill)")
    history_input(backfill_cmd)
    backfill_cmd.add_argument("--wait", type=_seconds, default=0.0, metavar="SECONDS",
                              help="wait at most this long for the dataflow to apply it all "
                                   "(default 0: as long as it takes); exit status "
                                   f"{BACKFILL_NOT_APPLIED} when it had not by then")
    backfill_cmd.add_argument("--no-wait", action="store_true",
                              help="return once the history is appended")
    backfill_cmd.set_defaults(func=_cmd_backfill)

    export_cmd = command("export", "write the live profiles, memberships and trigger log "
                                   "as Parquet")
    export_cmd.add_argument("--out", type=output_folder, required=True, help="output folder")
    export_cmd.add_argument("--as-of", default=None, metavar="TIME",
                            help="the time features are computed at: ISO-8601 or epoch "
                                 "seconds (default: now)")
    export_cmd.set_defaults(func=_cmd_export)

    uplift_cmd = command("uplift", "each marketing trigger's conversion next to its "
                                   "hold-out's, from the live trigger log and orders")
    uplift_cmd.add_argument("--window", type=_window, default=7 * 86400.0, metavar="DURATION",
                            help="an order within this long after an occasion converts it "
                                 "(e.g. 7d, 48h; default 7d)")
    uplift_cmd.add_argument("--since", default=None, metavar="TIME",
                            help="leave out occasions due before: ISO-8601 or epoch seconds "
                                 "(default: as far back as the trigger log goes)")
    uplift_cmd.add_argument("--as-of", default=None, metavar="TIME",
                            help="count occasions whose window has closed by then "
                                 "(default: now)")
    uplift_cmd.add_argument("--json", action="store_true", help="print JSON, not a table")
    uplift_cmd.set_defaults(func=_cmd_uplift)

    redrive_cmd = command("redrive", "append again the events the trigger rules failed on "
                                     "(dead-lettered), once the rules are fixed")
    redrive_cmd.add_argument("--dry-run", action="store_true",
                             help="count them, change nothing")
    redrive_cmd.set_defaults(func=_cmd_redrive)

    show = command("config", "validate the configuration and print the effective values")
    show.set_defaults(func=_cmd_config)

    check = command("check-config", "validate the configuration: print ok, or every error "
                                    "(and exit non-zero)")
    check.set_defaults(func=_cmd_check_config)
    return parser


def exit_on_signal(exit_now: Callable[[], None]) -> None:
    """Call `exit_now` on SIGTERM or SIGINT, even while the main thread is in Bytewax's Rust
    code, where a Python handler waits its turn until Bytewax runs Python again (never, for
    a process waiting for its peers): the interpreter's C-level handler writes the signal's
    number to a pipe at once, and a thread of ours reads it."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    once = threading.Lock()

    def stop() -> None:
        if once.acquire(blocking=False):
            exit_now()

    def watch() -> None:
        while True:
            if {signal.SIGTERM, signal.SIGINT} & set(os.read(read_fd, 64)):
                stop()

    threading.Thread(target=watch, name="signals", daemon=True).start()
    for signum in (signal.SIGTERM, signal.SIGINT):  # a handler, so that the pipe is written
        signal.signal(signum, lambda signum, frame: stop())


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds `finally` blocks: an embedded Redis is stopped


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    stop_with_parent()  # a part of `crmflow up` or of a dataflow group
    try:
        args.func(args)
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # not a bug of ours: say so
        raise SystemExit(f"crmflow {args.command}: Redis is unavailable: {exc}") from None
    except BrokenPipeError:  # `crmflow tail | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


if __name__ == "__main__":
    main()
