"""A mocked ``gs://`` backend for tests: buckets are folders under a local root; no network.

What it replaces is exactly what talks to Google Cloud Storage, and nothing of kajax:

* ``etils.epath`` (kajax, Orbax's directory handling, TensorBoard files) reaches ``gs://``
  through fsspec's ``gcs`` filesystem (gcsfs in production); here that protocol is a local
  filesystem rooted at the fake bucket folder;
* Orbax writes arrays with TensorStore's ``gcs`` kvstore driver; here its spec builder
  returns a ``file`` kvstore at the same place;
* Orbax's check for hierarchical-namespace buckets (google-cloud-storage client) says no.

kajax itself runs unchanged: any ``os.path``/``open`` left on a ``gs://`` path would create a
local ``gs:`` directory instead, which the tests check for.
"""

from __future__ import annotations

import importlib
import os

import fsspec
import pytest
from fsspec.implementations import local

PREFIX = "gs://"


class FakeGCSFileSystem(local.LocalFileSystem):
  """``gs://bucket/key`` <-> ``<root>/bucket/key``; everything else as LocalFileSystem."""

  protocol = ("gs", "gcs")
  root_dir = ""  # Set by install().

  def __init__(self, *args, finalize_on_close=None, **kwargs):
    del finalize_on_close  # gcsfs's option; meaningless locally.
    super().__init__(*args, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = fsspec.utils.stringify_path(path)
    if path.startswith(PREFIX):
      return os.path.join(cls.root_dir, path[len(PREFIX):]).rstrip("/")
    return super()._strip_protocol(path)

  def unstrip_protocol(self, name):  # pylint: disable=arguments-renamed
    return PREFIX + os.path.relpath(name, self.root_dir)

  def glob(self, path, **kwargs):  # epath prefixes the results with gs:// itself.
    return [os.path.relpath(p, self.root_dir) for p in super().glob(path, **kwargs)]


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """Routes ``gs://`` to ``tmp_path/gcs`` during the test; yields that folder."""
  from etils.epath import backend
  from orbax.checkpoint._src.path import gcs_utils

  root = tmp_path / "gcs"
  root.mkdir()
  monkeypatch.setattr(FakeGCSFileSystem, "root_dir", str(root))
  registry = importlib.import_module("fsspec.registry")  # fsspec.registry is a mapping.
  for name in FakeGCSFileSystem.protocol:
    # pylint: disable-next=protected-access
    monkeypatch.setitem(registry._registry, name, FakeGCSFileSystem)
  cached = backend.fsspec_backend._get_filesystem  # pylint: disable=protected-access
  cached.cache_clear()  # epath keeps one filesystem per protocol: drop any real one.

  def file_kvstore(path):
    bucket, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {"driver": "file", "path": os.path.join(str(root), bucket, key)}

  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", file_kvstore)
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  yield root
  cached.cache_clear()  # ... and forget the fake one, so no later test writes through it.
