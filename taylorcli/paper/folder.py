"""The plan's output folder: claimed with paper.json (the paper and scale it holds), refused when
it is someone else's folder or holds runs of other recipes; everything the plan writes at its
top (plan.csv, slurm/, logs/) goes through it (files.py's rule), and nothing is ever deleted
but the plan's own records of a failed attempt."""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..errors import OwnershipError, PaperError, RunDirError
from ..files import FolderLock, OwnedFolder
from ..recipe import setting_key
from ..run.directory import RunDir
from ..run.reading import find_runs
from .plan import Plan

MARKER = "paper.json"
IGNORED = ("data.mean", "data.std", "model.module_path", "name")  # filled in when a run starts
# Characters an #SBATCH line, a shell word or a Slurm file-name pattern would read differently.
UNSAFE_PATH = set(" \t\n\r\"'`$\\;&|<>%*?[]{}()#!~") | {chr(c) for c in range(32)} | {"\x7f"}


def folder(out: Path) -> OwnedFolder:
    """The plan's folder, known by its paper.json."""
    return OwnedFolder(out, MARKER)


def check_folder(plan: Plan, out: Path) -> None:
    """Refuse an --out that is a file, another paper's or scale's folder, a folder of the user's,
    or one holding runs that are not this plan's (another recipe or setting), in one line."""
    m = plan.manifest
    owned = folder(out)
    if out.exists() and not out.is_dir():
        raise PaperError(f"--out {out}: is a file, not a folder; choose a new folder")
    if not out.is_dir():
        return
    if not owned.is_owned():
        if not owned.is_new():  # plan.csv, slurm/ or report/ of the user's are not ours
            raise PaperError(str(owned.refusal("a `taylorcli paper` folder")))
        return
    info = owned.read_marker()
    if (info.get("paper"), info.get("scale")) != (m.name, m.scale):
        raise PaperError(f"--out {out}: holds paper {info.get('paper')} at scale "
                         f"{info.get('scale')}, not {m.name} at scale {m.scale}; choose another "
                         f"--out")
    runs = {r.folder: r for r in plan.runs if r.kind == "train"}
    sweeps = {r.sweep for r in plan.runs if r.kind == "spawn"}
    for path in find_runs(out, skip=out / "report"):
        rel = path.relative_to(out).as_posix()
        if rel.split("/")[0] in sweeps:
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


def check_script_path(out: Path) -> None:
    """A folder whose path a SLURM script must carry: no characters a #SBATCH line, a shell
    word or a Slurm file-name pattern would read differently."""
    bad = sorted({c for c in str(out) if c in UNSAFE_PATH})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise PaperError(f"--out {str(out)!r}: contains {shown}, which a SLURM script cannot "
                         f"carry safely; choose a path of letters, digits and / _ . + - , =")


def claim_folder(plan: Plan, out: Path) -> OwnedFolder:
    """Check the folder, create it, and write paper.json (or say in one line why it cannot be)."""
    check_folder(plan, out)
    m = plan.manifest
    owned = folder(out)
    try:
        owned.claim({"kind": "paper", "paper": m.name, "scale": m.scale, "source": m.source,
                     "taylorcli": __version__}, "a `taylorcli paper` folder")
        owned.check_writable()
    except OwnershipError as e:
        raise PaperError(str(e)) from None
    return owned


def lock(out: Path) -> FolderLock:
    """The lock `paper --local` holds while it trains (a second one on the same --out is refused)."""
    return FolderLock(out, "taylorcli paper --local")


def write_file(out: Path, name: str, text: str) -> Path:
    """Write a file of the plan's folder atomically, or one line saying why not."""
    try:
        return folder(out).write(name, text.encode())
    except OSError as e:
        raise PaperError(f"--out {out}: cannot write {name} ({e.strerror or e})") from None
