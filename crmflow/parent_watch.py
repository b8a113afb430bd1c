"""A child of `crmflow up` or of a dataflow group stops when its parent is gone.

The parent stops its children on SIGTERM or Ctrl-C, but a SIGKILL (the OOM killer, a
`kill -9`, a supervisor's timeout) gives it no chance: its children ran on, unsupervised,
next to the group that replaced them, each owning the same buckets. The parent names
itself in the child's environment; the child watches for being re-parented and then
sends itself SIGTERM, which stops it as a Ctrl-C would.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

PARENT_ENV = "CRMFLOW_PARENT_PID"
CHECK_EVERY = 0.5  # seconds

log = logging.getLogger("crmflow")


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` for a child that must stop with this process."""
    return {**env, PARENT_ENV: str(os.getpid())}


def stop_with_parent() -> None:
    """In a child started with `child_environment`: stop when the parent is gone. The
    variable is taken out of the environment, so this process's own children (which get
    their own) never read a stale one."""
    named = os.environ.pop(PARENT_ENV, None)
    if named is None or not named.isdigit():
        return
    parent = int(named)
    if os.getppid() != parent:  # gone already, between the fork and this check
        _stop(parent)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(CHECK_EVERY)
        _stop(parent)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _stop(parent: int) -> None:
    log.warning("parent process %d is gone: stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)
