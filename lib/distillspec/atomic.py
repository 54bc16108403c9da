"""Atomic writes of files and folders: write to a temp file (or folder) beside the target, then rename, so readers
never see half of one; and
reading such a file back with an error that names it when it was damaged after all."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_as_umask(path: str | os.PathLike) -> None:
    """Give path (a file, or a folder and everything in it) the permissions a plain open() or mkdir() would have:
    temp files and folders are created owner-only, and a result is meant to be read by others."""
    path, mask = Path(path), umask()
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path), then rename tmp_path to path (same directory, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        share_as_umask(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def swap_in(tmp: Path, target: Path) -> Path:
    """Replace target by the finished directory tmp (beside it) in one rename; the old copy is removed after."""
    old = target.parent / f".{target.name}.old"
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def write_dir(target: str | os.PathLike, write) -> Path:
    """write(tmp) fills a temp dir beside target, which is then swapped in: readers never see a half-written one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        write(tmp)
        share_as_umask(tmp)  # mkdtemp made it owner-only
        swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_parquet(df, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(obj, path: str | os.PathLike) -> Path:
    return write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n", path)


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None):
    """A Parquet file as a DataFrame; a damaged or cut file is one error naming it, not pyarrow's."""
    import pandas as pd

    from .errors import DistillSpecError

    try:
        return pd.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise DistillSpecError(f"{path} is damaged ({type(err).__name__}: {err}); it cannot be read. Restore it, or "
                               "produce it again (run the study again: damaged drafts are evaluated again).") from err
