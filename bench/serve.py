"""Serve crmflow's API or the read floor with identical uvicorn settings (one worker)."""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

from api.app import create_app, freeze_startup_objects
from config.settings import load_settings


def main() -> None:
    which, config, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if which == "crmflow":
        app = create_app(load_settings(config))
    else:
        from bench.floor_app import app
    freeze_startup_objects()  # as `crmflow api` does; the floor gets the same treatment
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
