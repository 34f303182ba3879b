"""Where a compiled step's time goes: XLA's ops in a jax.profiler trace, summed by kind."""

from __future__ import annotations

import gzip
import json
import re
import time
from pathlib import Path

import jax

KINDS = ("conv/dot", "transpose/copy", "pad/concat/slice", "other")

# `%name = SHAPE opcode(operands), attributes`; a tuple SHAPE is parenthesized.
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%(?P<name>\S+) = (?:\([^=]*?\)|\S+) (?P<opcode>[\w-]+)\((?P<operands>.*?)\)"
    r"(?P<attrs>, .*)?$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_LIBRARY_CALL = re.compile(r'custom_call_target="[^"]*(conv|gemm|matmul)', re.IGNORECASE)
_SHAPING = re.compile(r"^(pad|concatenate|slice|dynamic-slice|dynamic-update-slice)$")


def _parse(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (opcode, attributes), operands left out, for the whole module."""
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            out[m["name"]] = (m["opcode"], m["attrs"] or "")
    return out


def kind_of(name: str, opcode: str, attrs: str) -> str:
    """Kind of one instruction, from its own opcode, name and attributes (never its operands).

    A library fusion (XLA CPU's YNNPACK, GPU's Triton GEMM) is a convolution or dot when the
    JAX operation it came from is one; loop fusions are named by XLA after what they fuse.
    """
    op = (_OP_NAME.search(attrs) or [None, ""])[1].rsplit("/", 1)[-1]
    if opcode in ("convolution", "dot") or _LIBRARY_CALL.search(attrs):
        return "conv/dot"
    if opcode == "fusion" and "kind=kLoop" not in attrs and op in ("conv_general_dilated",
                                                                    "dot_general"):
        return "conv/dot"
    parts = name.rsplit(".", 1)[0].split("_") if opcode == "fusion" else [opcode]
    if any(part in ("transpose", "copy") for part in parts):
        return "transpose/copy"
    if any(_SHAPING.match(part) for part in parts):
        return "pad/concat/slice"
    return "other"


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

    Wall time covered by no traced op is reported as `untraced`. On the CPU that is mostly
    XLA's own (Eigen) convolutions: their trace events cover the launch, not the work the
    thread pool does afterwards.
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
    ops = _parse(compiled.as_text())
    by_kind = dict.fromkeys(KINDS, 0.0)
    intervals = []
    for e in events:
        if e.get("ph") != "X" or e.get("name") not in ops:
            continue
        by_kind[kind_of(e["name"], *ops[e["name"]])] += e["dur"] / 1e3 / steps
        intervals.append((e["ts"], e["ts"] + e["dur"]))
    wall_ms = wall * 1e3 / steps
    return {"wall_ms": wall_ms, **by_kind,
            "untraced": max(wall_ms - _busy(intervals) / 1e3 / steps, 0.0)}
