"""The pure core of crmflow: events, client state, features and trigger rules.

Nothing here performs I/O or reads the clock; time is always an argument.

The one exception is this file, at import: when `make install` has compiled the core with
mypyc (`crmflow/compile_core.py`, about 1.3x the events per core), the compiled modules are
used instead of these sources, but only while they were built from exactly these sources
for this interpreter, so an edit or another Python falls back to the sources, never to a
stale build. `CRMFLOW_PURE_PYTHON=1` keeps the sources.

The frozen dataclasses made once or more per event (events, triggers, decisions, outcomes,
cart lines...), and the client state, write their `__init__` out with `object.__setattr__`:
mypyc compiles that to slot stores, while the one `dataclass` generates stays interpreted
and goes through each slot's descriptor (Event: 5.8 us a construction, about 0.4 us
written out; as Python both cost the same). `tests/test_records.py` holds every
written-out `__init__` to its class's fields, order and defaults.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path

SOURCES = Path(__file__).resolve().parent
COMPILED_DIR = SOURCES.parent / "build" / "core"
STAMP = COMPILED_DIR / "stamp.json"
PURE_PYTHON_VARIABLE = "CRMFLOW_PURE_PYTHON"


def compiled_sources() -> list[Path]:
    """The modules the build compiles: all but this one, which decides between them."""
    return sorted(p for p in SOURCES.glob("*.py") if p.name != "__init__.py")


def build_stamp() -> dict[str, str]:
    """What a build must match to be used: the sources' digest and this interpreter's ABI."""
    digest = hashlib.sha256()
    for path in compiled_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return {"sources": digest.hexdigest(), "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX")}


def build_is_current() -> bool:
    """A build exists and its stamp matches the sources and this interpreter."""
    try:
        stored = json.loads(STAMP.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(stored == build_stamp())


COMPILED = os.environ.get(PURE_PYTHON_VARIABLE, "") in ("", "0") and build_is_current()
if COMPILED:
    # The compiled modules shadow the sources; their shared runtime is a top-level module.
    __path__.insert(0, str(COMPILED_DIR / "features"))
    sys.path.append(str(COMPILED_DIR))
