"""Files on local disks and in cloud buckets (``gs://``) through ``etils.epath``.

Every path kajax writes or reads — workdir, teacher and student directories, results,
pictures, TensorBoard — goes through here or through ``epath.Path`` directly, so a ``gs://``
workdir works wherever a local one does (Orbax and TFDS accept ``gs://`` themselves).

Writes are atomic: a reader sees the old file or the new one, never half of one. Locally a
file is written under a temporary sibling name and renamed (POSIX rename is atomic); in an
object store an object upload already is atomic (a new object appears whole or not at all)
while a "rename" is a copy, so the object is written in place. Directories (teachers,
students) use :func:`atomic_directory`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from typing import Any, Iterator

import numpy as np
from etils import epath

PathLike = str | os.PathLike


def resolve(path: PathLike) -> epath.Path:
  """A user-typed path: ``~`` expanded, local paths made absolute, URLs kept as they are."""
  text = os.fspath(path)
  if is_url(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def is_url(path: PathLike) -> bool:
  """True for ``gs://bucket/...`` (and other ``scheme://``) paths."""
  return "://" in os.fspath(path)


def is_local(path: PathLike) -> bool:
  return not is_url(path)


def join(base: PathLike, *parts: str) -> str:
  """``os.path.join`` that keeps ``gs://`` intact; returns a string."""
  return os.fspath(epath.Path(base).joinpath(*parts))


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically, creating parent directories."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(path):
    path.write_bytes(data)  # An object upload is atomic by itself.
    return
  tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    tmp.write_bytes(data)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_text(path: PathLike, text: str) -> None:
  """Writes UTF-8 ``text`` to ``path`` atomically."""
  write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, payload: Any, indent: int = 2) -> None:
  """Writes ``payload`` as indented JSON atomically (serialised before anything is written)."""
  write_text(path, json.dumps(payload, indent=indent) + "\n")


def read_json(path: PathLike) -> Any:
  return json.loads(epath.Path(path).read_text())


def write_png(path: PathLike, image: np.ndarray) -> None:
  """Writes a uint8 (H, W, 3) or (H, W) array as a PNG atomically."""
  from PIL import Image  # Imported here: only pictures need it.
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
  write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def atomic_directory(path: PathLike, marker: str) -> Iterator[epath.Path]:
  """Yields where to write a directory's content so that ``path`` appears complete or not.

  Locally: a hidden temporary sibling, renamed onto ``path`` at the end (an old ``path`` is
  moved aside first and put back if the rename fails). In an object store, where renaming is
  copying: ``path`` itself, emptied first; the caller writes ``marker`` (the file readers check
  for, e.g. ``teacher.json``) last, so an interrupted write leaves no marker and reads as absent.

  Args:
    path: the directory to (re)create.
    marker: name of the file inside it whose presence means "complete".
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(path):
    if (path / marker).exists():
      (path / marker).unlink()  # Incomplete from now on, until the caller writes it again.
    if path.exists():
      path.rmtree()
    path.mkdir(parents=True)
    yield path
    return
  tag = uuid.uuid4().hex[:8]
  tmp = path.parent / f".{path.name}.tmp-{tag}"
  tmp.mkdir()
  trash = None
  try:
    yield tmp
    if path.exists():
      trash = path.parent / f".{path.name}.old-{tag}"
      os.rename(path, trash)
    os.rename(tmp, path)
  except BaseException:
    if tmp.exists():
      tmp.rmtree()
    if trash is not None and not path.exists():
      os.rename(trash, path)  # Put the old directory back.
    raise
  if trash is not None:
    trash.rmtree()
