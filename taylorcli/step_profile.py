"""Where a compiled step's time goes: XLA's ops in a jax.profiler trace, summed by kind."""

from __future__ import annotations

import gzip
import json
import re
import time
from pathlib import Path

import jax

# First match wins. An op is named by its HLO instruction; its kind is read from that line.
KINDS = (
    ("conv/dot", re.compile(r"convolution\(|conv_general_dilated|dot\(|dot_general")),
    ("transpose/copy", re.compile(r"^(transpose|copy)|= \S+ (transpose|copy)\(")),
    ("pad/concat/slice", re.compile(r"^\S*(pad|concatenate|slice)")),
    ("other", re.compile(r"")),
)


def _instructions(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> its line, for every instruction of the compiled module."""
    out = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = ", line)
        if m:
            out[m.group(1)] = line.strip()
    return out


def _busy(intervals) -> float:
    """Length of the union of [start, end) intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def profile_step(compiled, state, args, trace_dir: Path, steps: int = 2) -> dict:
    """Run `steps` steps under the profiler; ms per step by kind of traced op, and untraced time.

    Wall time not covered by any traced op is reported as `untraced`: on the CPU that is
    mostly XLA's own (Eigen) convolutions, which the trace does not name, and runtime gaps.
    """
    state, _ = compiled(state, *args)
    jax.block_until_ready(state)
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        start = time.perf_counter()
        for _ in range(steps):
            state, _ = compiled(state, *args)
        jax.block_until_ready(state)
        wall = time.perf_counter() - start
    traces = sorted(trace_dir.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    events = json.load(gzip.open(traces[-1]))["traceEvents"]
    ops = _instructions(compiled.as_text())
    by_kind = {name: 0.0 for name, _ in KINDS}
    intervals = []
    for e in events:
        if e.get("ph") != "X" or e.get("name") not in ops:
            continue
        line = f"{e['name']} = {ops[e['name']].split(' = ', 1)[1]}"
        kind = next(name for name, pattern in KINDS if pattern.search(line))
        by_kind[kind] += e["dur"] / 1e3 / steps
        intervals.append((e["ts"], e["ts"] + e["dur"]))
    wall_ms = wall * 1e3 / steps
    return {"wall_ms": wall_ms, **by_kind,
            "untraced": max(wall_ms - _busy(intervals) / 1e3 / steps, 0.0)}
