"""Driving wrk (a C load generator) on loopback, for a bounded time, and reading its report."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


@dataclass(frozen=True)
class LoadResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int

    def as_dict(self) -> dict[str, float]:
        return {"requests_per_s": round(self.requests_per_s, 1), "p50_ms": self.p50_ms,
                "p99_ms": self.p99_ms, "errors": self.errors}


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return round(float(match.group(1)) * _UNITS[match.group(2)], 3)


def run_wrk(url: str, lua: str, *, connections: int, seconds: float) -> LoadResult:
    """`lua` is a wrk script (request generation); loopback URLs only."""
    if not url.startswith(("http://127.0.0.1", "http://localhost")):
        raise ValueError("load is only ever sent to this machine")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    threads = 1 if connections < 4 else 2
    try:
        output = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
             "--latency", "--timeout", "5s", "-s", script.name, url],
            capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    finally:
        Path(script.name).unlink()
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    errors = 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    return LoadResult(rate, p50, p99, errors)


def random_get_script(path_prefix: str, ids: int, headers: dict[str, str]) -> str:
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    return f"""{header_lines}
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "{path_prefix}" .. math.random(0, {ids - 1}))
end
"""


def batch_post_script(path: str, events_per_request: int, headers: dict[str, str], *,
                      user_prefix: str = "u", users: int = 100_000) -> str:
    """Segment batches of product views with fresh message ids, as a site would send, by
    random users `<user_prefix>0` .. `<user_prefix><users - 1>`."""
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    return f"""{header_lines}
wrk.headers["Content-Type"] = "application/json"
local counter = 0
local thread_id = tostring(math.random(1, 1000000000))
request = function()
  local parts = {{}}
  for i = 1, {events_per_request} do
    counter = counter + 1
    parts[i] = '{{"type":"track","event":"Product Viewed","userId":"{user_prefix}' ..
      math.random(0, {users - 1}) .. '","messageId":"' .. thread_id .. '-' .. counter ..
      '","properties":{{"product_id":"p' .. math.random(0, 4999) .. '","price":9.5}}}}'
  end
  return wrk.format("POST", "{path}", nil, '{{"batch":[' .. table.concat(parts, ",") .. ']}}')
end
"""


def paths_script(paths: list[str], headers: dict[str, str]) -> str:
    """GET one of `paths` at random per request (e.g. pages of a segment by cursor)."""
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    quoted = ",".join(f'"{p}"' for p in paths)
    return f"""{header_lines}
math.randomseed(os.time())
local paths = {{{quoted}}}
request = function()
  return wrk.format("GET", paths[math.random(1, #paths)])
end
"""


def contains_script(path: str, ids: int, per_request: int, headers: dict[str, str]) -> str:
    """POST `per_request` random client ids (c0 .. c<ids-1>) to a contains endpoint."""
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    return f"""{header_lines}
wrk.headers["Content-Type"] = "application/json"
math.randomseed(os.time())
request = function()
  local parts = {{}}
  for i = 1, {per_request} do
    parts[i] = '"c' .. math.random(0, {ids - 1}) .. '"'
  end
  return wrk.format("POST", "{path}", nil, '{{"client_ids":[' .. table.concat(parts, ",") .. ']}}')
end
"""
