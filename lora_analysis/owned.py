"""The toolkit deletes or replaces only files it wrote itself.

Every folder the toolkit writes into (a run, a sweep, an analysis, a report, a published copy of a report)
has its own file names, listed in ``layout`` (``RunDir.owns``, ``SweepDir.owns``, ...), and the temporary
names of its atomic writes (``TEMPORARY``). A folder holding anything else is refused before any work, in
one line naming what it holds: nothing in it is emptied, replaced or moved aside. Removal goes through
``remove_own``, which leaves every entry it does not recognise where it is.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from lora_analysis.errors import LoraAnalysisError, printable

# atomic.write_atomic's ".<name>.<uuid>.tmp", atomic.replaced_folder's ".<name>.<uuid>.old" and the
# trainer's temporary adapter folder ".adapter-<random>" (tempfile.TemporaryDirectory).
TEMPORARY = re.compile(r"\..+\.[0-9a-f]{32}\.(tmp|old)|\.adapter-[A-Za-z0-9_]+")

Owns = Callable[[Path], bool]


def is_temporary(entry: Path) -> bool:
    return TEMPORARY.fullmatch(entry.name) is not None


def plain_file(entry: Path) -> bool:
    """A regular file that is not a symbolic link (a link's target may be anybody's)."""
    return entry.is_file() and not entry.is_symlink()


def plain_dir(entry: Path) -> bool:
    return entry.is_dir() and not entry.is_symlink()


def foreign_entries(folder: str | Path, owns: Owns) -> list[Path]:
    """The entries of ``folder`` that ``owns`` does not recognise as the toolkit's (none if it is absent).

    An entry that is gone by the time it is judged is nobody's to protect: another process of the toolkit
    (a second sweep into the same folder) removed it between the listing and the check (a released lock, a
    checkpoint at the end of a run, a refused run's empty folder). Judged foreign, it refused a sweep.
    """
    folder = Path(folder)
    if not plain_dir(folder):
        return []
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:  # removed since plain_dir looked
        return []
    return sorted(p for p in entries if not (is_temporary(p) or owns(p)) and os.path.lexists(p))


def all_ours(folder: Path, owns: Owns) -> bool:
    """A plain folder every entry of which ``owns`` recognises (an empty one included)."""
    return plain_dir(folder) and not foreign_entries(folder, owns)


def check_ours(folder: str | Path, kind: str, owns: Owns, hint: str = "choose another folder") -> None:
    """Raise ``LoraAnalysisError`` unless ``folder`` is absent, or a folder of the toolkit's own files only.

    ``kind`` names the use (``run``, ``sweep``, ``analysis``, ``report``); ``hint`` what the user can do.
    """
    folder = Path(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        what = "a symbolic link" if folder.is_symlink() else "a file"
        raise LoraAnalysisError(f"{printable(str(folder))} is {what}, not a {kind} folder: not touched ({hint})")
    foreign = foreign_entries(folder, owns)
    if foreign:
        names = ", ".join(printable(p.name) for p in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise LoraAnalysisError(
            f"{printable(str(folder))} holds files lora-analysis did not write ({names}{more}): not used as a {kind} "
            f"folder, nothing in it touched ({hint})"
        )


def remove_own(folder: str | Path, owns: Owns, keep: Callable[[Path], bool] = lambda p: False) -> None:
    """Remove the entries of ``folder`` that ``owns`` recognises (and temporary ones), but those ``keep`` names."""
    folder = Path(folder)
    if not plain_dir(folder):
        return
    for entry in folder.iterdir():
        if keep(entry) or not (is_temporary(entry) or owns(entry)):
            continue
        if plain_dir(entry):
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)

