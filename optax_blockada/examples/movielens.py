"""MovieLens-100K: finding, downloading and reading the ratings and side information.

MovieLens-100K (Harper & Konstan 2015: 100,000 ratings, 943 users, 1,682 movies) may be
used for research but not redistributed, so this project never ships it. It is read from
a path the user gives (``u.data``, the ``ml-100k/`` folder, or RecBole's
``ml-100k.inter``, with ``u.user``/``u.item`` or ``ml-100k.user``/``.item`` beside it for
side features), from the copy inside an installed ``recbole`` wheel
(``pip install --no-deps recbole==1.2.1``; found, never imported), or fetched with
:func:`download_movielens` (for Colab). :mod:`~optax_blockada.examples.recommender_data`
turns the ratings into training data.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence

import numpy as np

from optax_blockada.examples.recommender_data import (
  Categorical,
  Ratings,
  feature_matrix,  # re-exported: colabs/05_recommender uses movielens.feature_matrix
  planted_ratings,  # re-exported: older callers use movielens.planted_ratings
)

__all__ = [
  "AGE_BUCKETS",
  "DOWNLOAD_URL",
  "GENRES",
  "download_movielens",
  "feature_matrix",
  "find_movielens",
  "load_movielens",
  "planted_ratings",
]

DOWNLOAD_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"

# The 19 genres of MovieLens-100K, in the order of u.item's genre flags.
GENRES = tuple(
  "unknown|Action|Adventure|Animation|Children's|Comedy|Crime|Documentary|Drama|Fantasy|"
  "Film-Noir|Horror|Musical|Mystery|Romance|Sci-Fi|Thriller|War|Western".split("|")
)
# The user age feature's inclusive ranges (MovieLens-1M's groups).
AGE_BUCKETS = ((0, 17), (18, 24), (25, 34), (35, 44), (45, 49), (50, 55), (56, 200))


def _recbole_folder() -> pathlib.Path | None:
  """The ml-100k folder inside an installed recbole wheel (recbole is not imported)."""
  spec = importlib.util.find_spec("recbole")
  for location in (spec and spec.submodule_search_locations) or ():
    folder = pathlib.Path(location, "dataset_example", "ml-100k")
    if (folder / "ml-100k.inter").is_file():
      return folder
  return None


def find_movielens(path: str | os.PathLike | None = None) -> pathlib.Path:
  """Finds MovieLens-100K's ratings file (``u.data`` or ``ml-100k.inter``).

  ``path``: ``u.data``, RecBole's ``ml-100k.inter``, or a folder holding either (directly or
  in an ``ml-100k/`` sub-folder); ``None``: the copy in an installed ``recbole`` wheel. Raises
  ``FileNotFoundError`` saying what was tried and how to get the data.
  """
  how = (
    "Get MovieLens-100K with `pip install --no-deps recbole==1.2.1` (it ships a copy), or "
    f"download {DOWNLOAD_URL}, extract it and pass the path of u.data or of the ml-100k folder."
  )
  if path is None:
    folder = _recbole_folder()
    if folder is None:
      raise FileNotFoundError(f"MovieLens-100K was not found: recbole is not installed. {how}")
    return folder / "ml-100k.inter"
  p = pathlib.Path(path).expanduser()
  if p.is_file():
    return p
  if not p.is_dir():
    raise FileNotFoundError(f"MovieLens data path {str(p)!r} does not exist. {how}")
  for folder in (p, p / "ml-100k"):
    for name in ("u.data", "ml-100k.inter"):
      if (folder / name).is_file():
        return folder / name
  raise FileNotFoundError(
    f"no u.data or ml-100k.inter in the folder {str(p)!r} (or in its ml-100k/ sub-folder). {how}"
  )


def download_movielens(directory: str | os.PathLike, *, url: str = DOWNLOAD_URL) -> pathlib.Path:
  """Downloads and extracts ``ml-100k.zip`` into ``directory``; returns ``ml-100k/u.data``.

  The archive is fetched and extracted in a temporary folder, renamed to
  ``directory/ml-100k`` only when complete (an interrupted download leaves nothing
  half-written); if ``directory/ml-100k/u.data`` exists, nothing is downloaded. MovieLens'
  licence forbids redistribution: keep the files out of version control. Raises
  ``ValueError`` if the archive holds no ``ml-100k/u.data``, ``OSError`` if the download fails.
  """
  directory = pathlib.Path(directory).expanduser()
  target = directory / "ml-100k"
  if (target / "u.data").is_file():
    return target / "u.data"
  directory.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=directory, prefix=".ml-100k-download-") as tmp:
    archive = pathlib.Path(tmp) / "ml-100k.zip"
    with urllib.request.urlopen(url) as response, open(archive, "wb") as f:
      shutil.copyfileobj(response, f)
    extracted = pathlib.Path(tmp) / "extracted"
    with zipfile.ZipFile(archive) as z:
      z.extractall(extracted)
    if not (extracted / "ml-100k" / "u.data").is_file():
      raise ValueError(f"the archive from {url} holds no ml-100k/u.data.")
    os.replace(extracted / "ml-100k", target)
  return target / "u.data"


def _read_rows(path: pathlib.Path, sep: str | None, *, header: bool, encoding: str = "utf-8"):
  """``(line_number, fields)`` of the non-empty lines (the header, if any, skipped)."""
  try:
    text = path.read_text(encoding=encoding)
  except UnicodeDecodeError as e:
    raise ValueError(f"{str(path)!r} is not a text file ({e}).") from None
  lines = enumerate(text.splitlines(), start=1)
  return [(n, line.split(sep)) for n, line in lines if line.strip() and not (header and n == 1)]


def _parse_ratings(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(user_id, item_id, rating)`` of a ``u.data`` or ``ml-100k.inter`` file."""
  rows = _read_rows(path, None, header=path.suffix == ".inter")
  if not rows:
    raise ValueError(f"{str(path)!r} contains no ratings.")
  user, item = np.empty(len(rows), np.int64), np.empty(len(rows), np.int64)
  rating = np.empty(len(rows), np.float64)
  for k, (number, fields) in enumerate(rows):
    where = f"{str(path)!r}, line {number}"
    if len(fields) not in (3, 4):
      raise ValueError(
        f"{where}: expected tab-separated user, item, rating and timestamp, got "
        f"{len(fields)} fields: {' '.join(fields)!r}."
      )
    try:
      user[k], item[k], rating[k] = int(fields[0]), int(fields[1]), float(fields[2])
    except ValueError:
      raise ValueError(
        f"{where}: user and item must be integer ids and the rating a number, got {fields[:3]!r}."
      ) from None
    if user[k] < 1 or item[k] < 1 or not math.isfinite(rating[k]):
      raise ValueError(
        f"{where}: ids must be >= 1 (MovieLens ids are 1-based) and the rating finite, got "
        f"{fields[:3]!r}."
      )
  unique, counts = np.unique(user * (item.max() + 1) + item, return_counts=True)
  if np.any(counts > 1):
    u, i = divmod(int(unique[np.argmax(counts > 1)]), int(item.max() + 1))
    raise ValueError(f"{str(path)!r}: user {u} rates item {i} more than once.")
  return user, item, rating


def _categorical(index, labels, n_rows: int, values: Sequence[str] | None = None) -> Categorical:
  """Row ``index[k]`` has value ``labels[k]`` (values: the sorted labels if not given)."""
  values = tuple(sorted(set(labels)) if values is None else values)
  member = np.zeros((n_rows, len(values)), bool)
  member[index, np.asarray([values.index(v) for v in labels], np.int64)] = True
  return Categorical(values, member)


def _read_side(path: pathlib.Path, recbole: bool, n_rows: int, kind: str, parse, expected: str):
  """Row indices, parsed lines and row count (at least ``n_rows``) of a side file."""
  rows = _read_rows(path, "\t" if recbole else "|", header=recbole, encoding="latin-1")
  ids, parsed = [], []
  for number, fields in rows:
    try:
      ids.append(int(fields[0]))
      parsed.append(parse(fields, recbole))
    except (ValueError, IndexError):
      raise ValueError(
        f"{str(path)!r}, line {number}: expected {expected}; got {fields!r}."
      ) from None
  index = np.asarray(ids, np.int64) - 1
  if index.size and index.min() < 0:
    raise ValueError(f"{str(path)!r}: {kind} ids must be >= 1.")
  return index, parsed, max(n_rows, int(index.max()) + 1 if index.size else 0)


def _user_fields(fields: list[str], recbole: bool) -> tuple[int, str, str]:
  return int(fields[1]), fields[2].strip(), fields[3].strip()


def _genre_flags(fields: list[str], recbole: bool) -> list[bool]:
  if recbole:  # space-separated genre names
    names = fields[3].split() if len(fields) > 3 else []
    if any(g not in GENRES for g in names):
      raise ValueError
    return [g in names for g in GENRES]
  bits = [int(b) for b in fields[5:]]  # 19 0/1 flags
  if len(bits) != len(GENRES) or any(b not in (0, 1) for b in bits):
    raise ValueError
  return [bool(b) for b in bits]


def _read_users(path: pathlib.Path, recbole: bool, n_users: int) -> dict[str, Categorical]:
  """age/gender/occupation of ``u.user`` (``|``) or ``ml-100k.user`` (tab, header)."""
  expected = "user id, age, gender, occupation, zip code"
  index, fields, n_rows = _read_side(path, recbole, n_users, "user", _user_fields, expected)
  ages, genders, occupations = zip(*fields, strict=True) if fields else ((), (), ())
  age_names = tuple(f"{lo}-{hi}" if hi < 200 else f"{lo}+" for lo, hi in AGE_BUCKETS)
  bucket = [next((k for k, (lo, hi) in enumerate(AGE_BUCKETS) if lo <= a <= hi), -1) for a in ages]
  return {
    "age": _categorical(index, [age_names[b] for b in bucket], n_rows, age_names),
    "gender": _categorical(index, genders, n_rows),
    "occupation": _categorical(index, occupations, n_rows),
  }


def _read_items(path: pathlib.Path, recbole: bool, n_items: int) -> dict[str, Categorical]:
  """Genres of ``u.item`` (``|``, 19 flags, latin-1) or ``ml-100k.item`` (tab, header)."""
  expected = "an item id, a title, and the 19 MovieLens genres "
  expected += "(space-separated names)" if recbole else "(0/1 flags)"
  index, flags, n_rows = _read_side(path, recbole, n_items, "item", _genre_flags, expected)
  member = np.zeros((n_rows, len(GENRES)), bool)
  member[index] = np.asarray(flags, bool).reshape(len(index), len(GENRES))
  return {"genre": Categorical(GENRES, member)}


def load_movielens(path: str | os.PathLike | None = None) -> Ratings:
  """Loads MovieLens-100K: ratings, and side features when their files are present.

  Ids are 1-based in the files; index ``k`` here is id ``k + 1``. User side features
  (``age`` in :data:`AGE_BUCKETS`, ``gender``, ``occupation``) come from ``u.user`` or
  ``ml-100k.user``, item genres (:data:`GENRES`) from ``u.item`` or ``ml-100k.item``,
  when those files sit next to the ratings. ``path``: see :func:`find_movielens`. Raises
  ``FileNotFoundError`` if no data is found, ``ValueError`` naming the file and line if one
  is malformed.
  """
  ratings_path = find_movielens(path)
  user_id, item_id, rating = _parse_ratings(ratings_path)
  n_users, n_items = int(user_id.max()), int(item_id.max())
  recbole = ratings_path.suffix == ".inter"
  stem = "ml-100k." if recbole else "u."
  users_path, items_path = (ratings_path.parent / f"{stem}{n}" for n in ("user", "item"))
  user_side = _read_users(users_path, recbole, n_users) if users_path.is_file() else {}
  item_side = _read_items(items_path, recbole, n_items) if items_path.is_file() else {}
  n_users = user_side["age"].member.shape[0] if user_side else n_users
  n_items = item_side["genre"].member.shape[0] if item_side else n_items
  described = str(ratings_path)
  if not (user_side or item_side):
    described += " (no u.user/u.item beside it: no side features)"
  ids = ((user_id - 1).astype(np.int32), (item_id - 1).astype(np.int32))  # 0-based indices
  return Ratings(*ids, rating.astype(np.float32), n_users, n_items, user_side, item_side, described)
