"""The plan's output folder: claimed with paper.json (the paper and scale it holds), refused when
it is someone else's folder or holds runs of other recipes; nothing in it is ever deleted."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..errors import PaperError, RunDirError
from ..recipe import setting_key
from ..run.directory import RunDir, find_runs, write_atomic
from .plan import Plan

MARKER = "paper.json"
OWN = ("report", "logs", "slurm", "plan.csv", MARKER)  # what the plan itself writes at the top
IGNORED = ("data.mean", "data.std", "model.module_path", "name")  # filled in when a run starts


def _marker(out: Path) -> dict | None:
    try:
        info = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def check_folder(plan: Plan, out: Path) -> None:
    """Refuse an --out that is a file, another paper's or scale's folder, a folder of the user's,
    or one holding runs that are not this plan's (another recipe or setting), in one line."""
    m = plan.manifest
    if out.exists() and not out.is_dir():
        raise PaperError(f"--out {out}: is a file, not a folder; choose a new folder")
    if not out.is_dir():
        return
    info = _marker(out)
    if info is not None and (info.get("paper"), info.get("scale")) != (m.name, m.scale):
        raise PaperError(f"--out {out}: holds paper {info.get('paper')} at scale "
                         f"{info.get('scale')}, not {m.name} at scale {m.scale}; choose another "
                         f"--out")
    runs = {r.folder: r for r in plan.runs if r.kind == "train"}
    sweeps = {r.sweep for r in plan.runs if r.kind == "spawn"}
    for path in find_runs(out, skip=out / "report"):
        rel = path.relative_to(out).as_posix()
        top = rel.split("/")[0]
        if top in sweeps:
            continue  # spawned runs: their recipe is the parent's, checked there
        run = runs.get(rel)
        try:
            theirs = RunDir(path).read_recipe()
        except RunDirError:
            theirs = None
        if run is None or theirs is None or setting_key(theirs, IGNORED) != \
                setting_key(run.recipe, IGNORED):
            what = f"recipe {theirs.name}" if theirs is not None else "an unreadable recipe"
            why = "not a run of this plan" if run is None else "a different setting than the plan's"
            raise PaperError(f"--out {out}: holds {rel} ({what}), {why} ({m.name} at scale "
                             f"{m.scale}: {', '.join(runs)}); choose another --out")
    if info is None:
        mine = set(runs) | sweeps | set(OWN)
        other = sorted(e.name for e in out.iterdir()
                       if not e.name.startswith(".") and e.name not in mine)
        if other:
            raise PaperError(f"--out {out}: exists and is not a `taylorcli paper` folder (no "
                             f"{MARKER}; it holds {', '.join(other[:3])}); choose another --out")


def claim_folder(plan: Plan, out: Path) -> None:
    """Check the folder, create it, and write paper.json (or say in one line why it cannot be)."""
    check_folder(plan, out)
    m = plan.manifest
    try:
        out.mkdir(parents=True, exist_ok=True)
        if _marker(out) is None:
            info = {"kind": "paper", "paper": m.name, "scale": m.scale, "source": m.source,
                    "taylorcli": __version__}
            write_atomic(out / MARKER, (json.dumps(info, indent=1) + "\n").encode())
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PaperError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def write_file(out: Path, name: str, text: str) -> Path:
    """Write a file of the plan's folder atomically, or one line saying why not."""
    path = out / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text.encode())
    except OSError as e:
        raise PaperError(f"--out {out}: cannot write {name} ({e.strerror or e})") from None
    return path
