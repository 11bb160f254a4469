"""Reading and writing run outputs through one path abstraction: etils.epath.

Every file genjax writes under a workdir (config.json, checkpoints, events,
sample grids, metrics.json, reports, figures, .npz/.npy arrays, NIfTI maps)
goes through `etils.epath`, so a workdir may be anything epath supports: a
local folder, `gs://bucket/run` (GCS), `s3://...`. Nothing here calls
`open()`, `os.makedirs` or `os.path` on a workdir path: a URL passed through
`os.path.abspath` would become a local folder named `gs:` instead.

Paths stay strings at the interfaces (`join` returns `str`), so callers can
put them in JSON and log lines; arrays and figures are encoded in memory and
written as one object, which is also how object stores want them.
"""

import io
import os
import json

from etils import epath
import numpy as np

PathLike = epath.PathLike


def path(p: PathLike) -> epath.Path:
  """`p` as an epath.Path (local folder or a URL such as gs://bucket/run)."""
  return epath.Path(p)


def join(base: PathLike, *parts: str) -> str:
  """base/part/... as a string, URL schemes kept (unlike os.path on gs://)."""
  return str(epath.Path(base).joinpath(*parts))


def relpath(p: PathLike, start: PathLike) -> str:
  """`p` relative to `start` (both on the same filesystem), as a string."""
  return str(epath.Path(p).relative_to(epath.Path(start)))


def absolute(p: PathLike) -> epath.Path:
  """`p` made absolute: a URL is already; a relative local path is joined to
  the current directory (orbax wants absolute checkpoint paths)."""
  p = epath.Path(p)
  return p if p.is_absolute() else epath.Path(os.getcwd()) / p


def exists(p: PathLike) -> bool:
  return epath.Path(p).exists()


def makedirs(p: PathLike) -> epath.Path:
  """Creates folder `p` and its parents (a no-op on object stores)."""
  p = epath.Path(p)
  try:
    p.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OSError(f"Could not create the folder {p}: {e}") from e
  return p


def write_bytes(p: PathLike, data: bytes) -> str:
  """Writes `data` as file `p`, creating its folder; returns `str(p)`.

  Raises:
    OSError naming the path.
  """
  p = epath.Path(p)
  makedirs(p.parent)
  try:
    p.write_bytes(data)
  except OSError as e:
    raise OSError(f"Could not write {p}: {e}") from e
  return str(p)


def write_text(p: PathLike, text: str) -> str:
  return write_bytes(p, text.encode("utf-8"))


def read_bytes(p: PathLike) -> bytes:
  """The bytes of file `p`; FileNotFoundError names the path."""
  p = epath.Path(p)
  try:
    return p.read_bytes()
  except FileNotFoundError as e:
    raise FileNotFoundError(f"No file {p}") from e


def read_text(p: PathLike) -> str:
  return read_bytes(p).decode("utf-8")


def write_json(p: PathLike, data, **kwargs) -> str:
  return write_text(p, json.dumps(data, **kwargs))


def read_json(p: PathLike):
  return json.loads(read_text(p))


def save_npy(p: PathLike, array) -> str:
  """np.save through epath."""
  buffer = io.BytesIO()
  np.save(buffer, np.asarray(array), allow_pickle=False)
  return write_bytes(p, buffer.getvalue())


def load_npy(p: PathLike) -> np.ndarray:
  return np.load(io.BytesIO(read_bytes(p)), allow_pickle=False)


def save_npz(p: PathLike, compressed: bool = True, **arrays) -> str:
  """np.savez(_compressed) through epath."""
  buffer = io.BytesIO()
  (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
  return write_bytes(p, buffer.getvalue())


def load_npz(p: PathLike):
  """np.load of an .npz read through epath (a context manager, as np.load)."""
  return np.load(io.BytesIO(read_bytes(p)), allow_pickle=False)


def glob(p: PathLike, pattern: str) -> list[str]:
  """Sorted paths (strings) in folder `p` matching `pattern`; [] if none."""
  folder = epath.Path(p)
  if not folder.exists():
    return []
  return sorted(str(x) for x in folder.glob(pattern))
