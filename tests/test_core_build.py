"""The compiled core (crmflow/compile_core.py): built where it can be, used only while it
matches the sources, and doing exactly what the sources do."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import features

REPO = Path(__file__).resolve().parents[1]
CAN_COMPILE = (shutil.which("cc") is not None or shutil.which("gcc") is not None) and \
    importlib.util.find_spec("mypyc") is not None
needs_build = pytest.mark.skipif(
    not features.build_is_current(),
    reason="no compiled core matches the sources (no C compiler, or features/ changed since "
           "`make install`): run `python -m crmflow.compile_core` to build one")

# Applies a day of the benchmark's event mix over 300 clients through the core as the
# dataflow does (parse, handle with the default rules, the timers due a week later) and
# prints a digest of every state's encoding and every trigger decision.
WORKLOAD = """
import hashlib, sys
import orjson
import features
from bench.workload import events
from config.settings import Settings
from features.codec import encode_state
from features.events import parse_event
from features.identity import handle
from features.triggers import fire_due
rules = Settings().trigger_rules()
digest, states = hashlib.sha256(), {}
for entry in events(6000, 300, start=1_700_000_000.0, span=86400.0, seed=7):
    outcome = handle(entry.client_key, states.get(entry.client_key),
                     parse_event(orjson.loads(entry.body)), rules)
    if outcome.state is not None:
        states[entry.client_key] = outcome.state
    for trigger in outcome.triggers:
        digest.update(repr((trigger.trigger_id, trigger.type, trigger.status, trigger.reason,
                            trigger.channel, trigger.fired_at)).encode())
for key in sorted(states):
    state, fired = fire_due(key, states[key], 1_700_000_000.0 + 8 * 86400.0, rules)
    digest.update(encode_state(state))
    for trigger in fired:
        digest.update(repr((trigger.trigger_id, trigger.type, trigger.status)).encode())
print(features.COMPILED, digest.hexdigest(), len(states))
"""


def _python(code: str, *, cwd: Path = REPO, pure: bool = False, path: Path | None = None
            ) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != features.PURE_PYTHON_VARIABLE}
    if pure:
        env[features.PURE_PYTHON_VARIABLE] = "1"
    if path is not None:
        env["PYTHONPATH"] = str(path)
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(not CAN_COMPILE, reason="no C compiler or no mypyc: the core runs as Python")
def test_a_machine_that_can_compile_has_a_current_build() -> None:
    """`make install` compiled the core: a failed build would leave the product 1.3x slower
    without anything else failing."""
    assert features.build_is_current(), (
        "no compiled core matches features/: run `python -m crmflow.compile_core` to see why "
        "(make install runs it)")


@needs_build
def test_the_compiled_core_does_exactly_what_the_sources_do() -> None:
    compiled = _python(WORKLOAD)
    pure = _python(WORKLOAD, pure=True)
    assert compiled[0] == "True" and pure[0] == "False"
    assert int(compiled[2]) == 300
    assert compiled[1:] == pure[1:]


@needs_build
def test_a_build_is_used_only_while_it_matches_the_sources(tmp_path: Path) -> None:
    """An edited source, a stamp from elsewhere or CRMFLOW_PURE_PYTHON: the sources run."""
    shutil.copytree(REPO / "features", tmp_path / "features",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(features.COMPILED_DIR, tmp_path / "build" / "core")
    which = "import features, features.state as s; print(features.COMPILED, s.__file__)"

    def used() -> tuple[str, str]:
        compiled, module = _python(which, cwd=tmp_path, path=tmp_path)
        return compiled, Path(module).suffix

    assert used() == ("True", ".so")
    assert _python(which, cwd=tmp_path, path=tmp_path, pure=True)[0] == "False"
    stamp = tmp_path / "build" / "core" / "stamp.json"
    stored = json.loads(stamp.read_text(encoding="utf-8"))
    stamp.write_text(json.dumps({**stored, "ext_suffix": ".cpython-399-x.so"}), encoding="utf-8")
    assert used() == ("False", ".py")
    stamp.write_text(json.dumps(stored), encoding="utf-8")
    assert used() == ("True", ".so")
    with (tmp_path / "features" / "rules.py").open("a", encoding="utf-8") as source:
        source.write("\n# an edit after the build\n")
    assert used() == ("False", ".py")
