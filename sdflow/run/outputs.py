"""The one writer of run outputs: new files only (a taken name gets _1, _2...), whole, listed in the manifest.

Every door writes through here: a run on this machine, each job of a fused sweep, and the driver of a sweep
on Ray or Slurm, which writes the files its workers sent back (``Collected`` keeps them on the worker).
Nothing is ever replaced: a rerun into the same folder keeps the earlier files, and ``claim_folder``
gives each new run a folder of its own.

    with RunFolder(folder, ctx.record) as files:   # manifest.json: running, then done / failed / interrupted
        ctx.files = files                          # save_image calls files.write(name, render, node)
        execute(plan, ctx)
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..engine import RunRecord
from .manifest import add_image, run_manifest


def free_names(name: str) -> Iterator[str]:
    """NAME.png, then NAME_1.png, NAME_2.png, ...: the names a new file may take."""
    stem, suffix = os.path.splitext(name)
    yield name
    for number in itertools.count(1):
        yield f"{stem}_{number}{suffix}"


def write_new_file(folder: Path, name: str, render: Callable[[str], bytes]) -> tuple[Path, bytes]:
    """Write ``render(final_name)`` as a new file in ``folder``; never replace one. Returns its path and bytes.

    Taken names get a number (NAME_1.png, ...): a rerun into the same folder keeps the earlier files. The
    bytes go to a temporary file first, then are hard-linked to the final name, which fails (rather than
    replaces) if the name exists, so a reader never sees half a file and two writers never clash. The file
    gets the user's usual permissions (0666 less the umask), not mkstemp's 0600.
    """
    mask = os.umask(0)
    os.umask(mask)
    folder.mkdir(parents=True, exist_ok=True)
    for candidate in free_names(name):
        final = folder / candidate
        if final.exists():
            continue
        data = render(candidate)  # a file may name itself (a PNG's metadata does)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}-", suffix=".tmp", dir=folder)
        try:
            os.fchmod(fd, 0o666 & ~mask)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            try:
                os.link(tmp, final)
            except FileExistsError:
                continue  # another writer took the name meanwhile: the next one
            except OSError:  # a filesystem without hard links: create the name exclusively, then write
                try:
                    out = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                except FileExistsError:
                    continue
                with os.fdopen(out, "wb") as handle:
                    handle.write(data)
            return final, data
        finally:
            Path(tmp).unlink(missing_ok=True)
    raise AssertionError("free_names never ends")


def claim_folder(base: str | Path) -> Path:
    """``base``, or ``base_2``, ``base_3``...: the first that this call could create (mkdir is atomic: exactly one
    process creates each name), so two runs started in the same second never share a folder."""
    base = str(base)
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    for number in itertools.count(1):
        candidate = base if number == 1 else f"{base}_{number}"
        try:
            os.mkdir(candidate)
            return Path(candidate)
        except FileExistsError:
            continue
    raise AssertionError("itertools.count never ends")


class RunFolder:
    """A run's output folder while the run goes: files written new (see write_new_file), results listed in its
    manifest.json, which says how the run ended when the ``with`` closes.

    ``on_write(path)`` is told of every result written (the command's Ctrl-C report lists them).
    """

    def __init__(self, folder: str | Path, record: RunRecord, started: str | None = None,
                 on_write: Callable[[Path], None] | None = None):
        self.folder, self.record, self.started, self.on_write = Path(folder), record, started, on_write
        self.saved: list[Path] = []
        self._manifest = None

    def __enter__(self) -> RunFolder:
        self._manifest = run_manifest(self.folder, workflow=self.record.workflow_file, record=self.record,
                                      started=self.started)
        self._manifest.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        return bool(self._manifest.__exit__(*exc))

    def write(self, name: str, render: Callable[[str], bytes], node: str, listed: bool = True) -> Path:
        """Write a new file ``name`` (under a subfolder if it has one), never replacing one; returns its path."""
        target = self.folder / name
        path, data = write_new_file(target.parent, target.name, render)
        if listed:
            self.saved.append(path)
            add_image(self.folder, path.relative_to(self.folder).as_posix(), hashlib.sha256(data).hexdigest(), node)
            if self.on_write is not None:
                self.on_write(path)
        return path


@dataclass
class StaticFile:
    """A file whose bytes do not depend on its name (a workflow's text, a preview)."""

    data: bytes

    def __call__(self, file_name: str) -> bytes:
        return self.data


@dataclass
class PendingFile:
    """A file a worker's run made, to be written by the driver: its name, how to render it, the node, listed."""

    name: str
    render: Callable[[str], bytes]
    node: str
    listed: bool = True


@dataclass
class Collected:
    """A sweep worker's writer: keeps what its run would write, for the driver's RunFolder (no shared folder)."""

    files: list[PendingFile] = field(default_factory=list)

    def write(self, name: str, render: Callable[[str], bytes], node: str, listed: bool = True) -> Path:
        self.files.append(PendingFile(name, render, node, listed))
        return Path(name)


def files_of(output, record: RunRecord, started: str | None = None,
             on_write: Callable[[Path], None] | None = None) -> contextlib.AbstractContextManager:
    """The writer of a run into ``output``: a folder (a RunFolder, with its manifest) or a writer as it is."""
    if hasattr(output, "write"):
        return contextlib.nullcontext(output)
    return RunFolder(output, record, started, on_write)
