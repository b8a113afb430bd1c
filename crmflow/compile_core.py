"""Compile the pure core (`features/`) with mypyc, when this machine can.

`make install` runs it. The core is most of the dataflow's time per event, and compiled it
does the same work about 1.3x faster (bench/README.md). It needs a C compiler, Python's
headers and mypyc (part of mypy, a dev dependency); without them crmflow runs the same
sources as Python, so a failed build says why and leaves the pure core in place. The build
goes to build/core, apart from the sources, and `features/__init__.py` uses it only while
its stamp matches the sources and the interpreter: an edited source is never shadowed.

    python -m crmflow.compile_core           build if the stamp is stale
    python -m crmflow.compile_core --force   build anyway
    python -m crmflow.compile_core --check   exit 1 unless a build matching the sources exists
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import features

PREFIX = "crmflow: compiling the core"


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def compile_core() -> None:
    """Build into a scratch folder, then swap it in: a failed build leaves no half build."""
    from mypyc.build import mypycify  # mypy's compiler: a dev dependency, imported on use
    from setuptools import Distribution

    stamp = features.build_stamp()  # of the sources as they are when the build starts
    scratch = features.COMPILED_DIR.with_name("core-building")
    shutil.rmtree(scratch, ignore_errors=True)
    # A copy of the sources, alone in a folder: from site-packages (a non-editable install,
    # the image) mypy would take every module beside them for the project's own.
    copy = scratch / "src"
    shutil.copytree(features.SOURCES, copy / "features",
                    ignore=shutil.ignore_patterns("__pycache__"))
    modules = [f"features/{path.name}" for path in features.compiled_sources()]
    try:
        with _working_directory(copy):
            # msgpack's stubs are a dev dependency: without them its calls stay Python calls.
            extensions = mypycify(["--ignore-missing-imports", *modules], opt_level="3",
                                  target_dir=str(scratch / "c"))
            distribution = Distribution({"name": "crmflow-core", "ext_modules": extensions})
            command = distribution.get_command_obj("build_ext")
            command.build_lib = str(scratch / "lib")
            command.build_temp = str(scratch / "temp")
            distribution.run_command("build_ext")
        (scratch / "lib" / "stamp.json").write_text(json.dumps(stamp), encoding="utf-8")
        shutil.rmtree(features.COMPILED_DIR, ignore_errors=True)
        (scratch / "lib").rename(features.COMPILED_DIR)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crmflow.compile_core",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--force", action="store_true", help="build even if the stamp is current")
    parser.add_argument("--check", action="store_true",
                        help="only report: exit 1 unless a current build exists")
    args = parser.parse_args(argv)
    if args.check:
        current = features.build_is_current()
        print("compiled core: current" if current else "compiled core: none or stale")
        return 0 if current else 1
    if features.build_is_current() and not args.force:
        return 0
    print(f"{PREFIX} with mypyc (once per change to features/, about a minute)...",
          flush=True)
    started = time.monotonic()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            compile_core()
    except (Exception, SystemExit) as exc:  # any failure leaves the pure core
        tail = "\n".join(log.getvalue().strip().splitlines()[-15:])
        print(f"{PREFIX} failed ({type(exc).__name__}: {exc}); crmflow runs the pure-Python "
              f"core, the same behaviour about 1.3x slower per event. The build said:\n{tail}",
              file=sys.stderr)
        return 0
    print(f"{PREFIX}: done in {time.monotonic() - started:.0f} s ({features.COMPILED_DIR})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
