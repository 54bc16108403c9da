"""A finished draft's manifest: the size and sha256 of each of its records, written atomically after them, so a draft
counts as finished only when the manifest is there and every file still matches it. Checked before the evaluation skips
a draft, before publishing and when importing; a damaged draft is evaluated again or refused with the file named."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..atomic import write_json
from .rundir import RunPaths, published_records


def _digest(path: Path) -> dict:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"size": path.stat().st_size, "sha256": sha.hexdigest()}


def write_manifest(files: dict[str, Path], dest: Path) -> Path:
    """The manifest of these files (by their published names; absent ones are not listed), written to dest."""
    return write_json({"files": {name: _digest(path) for name, path in files.items() if path.is_file()}}, dest)


def damage(files: dict[str, Path], manifest: Path) -> list[str]:
    """What is wrong with a draft's records against its manifest, one line per problem (empty: intact): a missing
    or unreadable manifest, a listed file missing, of another size or with another checksum."""
    if not manifest.is_file():
        return [f"{manifest} is missing (the draft's evaluation did not finish)"]
    try:
        listed = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return [f"{manifest} is damaged (not a manifest)"]
    problems = []
    for name, expected in listed.items():
        path = files.get(name)
        if path is None or not path.is_file():
            problems.append(f"{path or name} is missing")
        elif path.stat().st_size != expected["size"]:
            problems.append(f"{path} has {path.stat().st_size} bytes, {expected['size']} when written")
        elif _digest(path)["sha256"] != expected["sha256"]:
            problems.append(f"{path} changed since it was written (checksum)")
    return problems


def record_files(paths: RunPaths, name: str) -> dict[str, Path]:
    """A draft's records in the run directory by published name, its manifest left out."""
    return {k: v for k, v in published_records(paths, name).items() if v != paths.manifest(name)}


def seal(paths: RunPaths, name: str) -> Path:
    """Write the manifest of a draft whose records the evaluation has just written: the last write, which marks it
    finished."""
    return write_manifest(record_files(paths, name), paths.manifest(name))


def run_damage(paths: RunPaths, name: str) -> list[str]:
    """damage() of a draft in a run directory."""
    return damage(record_files(paths, name), paths.manifest(name))


def intact(paths: RunPaths, name: str) -> bool:
    """Whether the records under `name` are finished (their manifest written) and match it."""
    return paths.manifest(name).is_file() and not run_damage(paths, name)


def folder_damage(folder: Path, paths: RunPaths, name: str) -> list[str]:
    """damage() of a draft in a published records folder (files under their published names)."""
    manifest = paths.manifest(name).name
    return damage({k: folder / k for k in published_records(paths, name) if k != manifest}, folder / manifest)


__all__ = ["damage", "folder_damage", "intact", "record_files", "run_damage", "seal", "write_manifest"]
