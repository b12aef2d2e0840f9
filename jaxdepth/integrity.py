"""Checksum manifests: a directory read back is the directory that was written.

A manifest is a file ``checksums.json`` at the top of a directory. It lists every
other file below the directory with its size in bytes and its SHA-256, and
carries the SHA-256 of that list itself, so a flipped bit, a truncated or
missing file and a garbled manifest are all told apart from an intact
directory. It is written last, after everything it lists, and atomically
(a temporary file renamed into place), so its presence also says that the
directory was complete when it was sealed.

Example::

    write_manifest(step_dir)           # after the data are written
    problem(step_dir)                  # None, or what is wrong, in words
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib

__all__ = ["MANIFEST", "write_manifest", "problem"]

MANIFEST = "checksums.json"
_FORMAT = 1
_CHUNK = 1 << 20


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def _list_digest(files: dict) -> str:
  """SHA-256 of the file list in a canonical JSON form (sorted keys, no spaces)."""
  text = json.dumps(files, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


def _files(directory: pathlib.Path) -> list[pathlib.Path]:
  skip = {directory / MANIFEST, directory / (MANIFEST + ".tmp")}
  return sorted(p for p in directory.rglob("*") if p.is_file() and p not in skip)


def write_manifest(directory: str | os.PathLike) -> pathlib.Path:
  """Seals ``directory``: writes ``checksums.json`` for every file below it.

  Args:
    directory: a complete directory (nothing may be written to it afterwards).

  Returns:
    The manifest's path.
  """
  directory = pathlib.Path(directory)
  files = {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
           for p in _files(directory)}
  doc = {"format": _FORMAT, "files": files, "sha256": _list_digest(files)}
  tmp = directory / (MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump(doc, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, directory / MANIFEST)
  return directory / MANIFEST


def problem(directory: str | os.PathLike) -> str | None:
  """Checks ``directory`` against its manifest.

  Args:
    directory: a directory sealed by :func:`write_manifest`.

  Returns:
    ``None`` when every listed file has its recorded size and SHA-256, else a
    short phrase saying what is wrong (the first problem found), e.g.
    ``"state/_METADATA has 12 bytes where 4563 were written (shorter than written:
    truncated or replaced)"``.
  """
  directory = pathlib.Path(directory)
  path = directory / MANIFEST
  if not path.is_file():
    return (f"it has no {MANIFEST}: it was never sealed (the run stopped while writing it, "
            f"or an older jaxdepth wrote it)")
  try:
    doc = json.loads(path.read_bytes())
    files = doc["files"]
    ok = doc["sha256"] == _list_digest(files) and doc["format"] == _FORMAT
    items = sorted(files.items())
    for _, want in items:
      int(want["size"]), str(want["sha256"])
  except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
    return f"its {MANIFEST} is garbled (not the JSON jaxdepth writes)"
  if not ok:
    return f"its {MANIFEST} does not match its own checksum (garbled)"
  for name, want in items:
    p = directory / name
    if not p.is_file():
      return f"{name} is missing"
    size = p.stat().st_size
    if size != want["size"]:
      return (f"{name} has {size} bytes where {want['size']} were written "
              + ("(shorter than written: truncated or replaced)" if size < want['size'] else
                 "(overwritten)"))
    if _sha256(p) != want["sha256"]:
      return f"{name} does not match its checksum (its bytes changed since it was written)"
  return None
