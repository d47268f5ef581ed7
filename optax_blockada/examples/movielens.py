"""Ratings data for the recommender: MovieLens-100K, a seeded split, features, planted data.

MovieLens-100K (Harper & Konstan 2015: 100,000 ratings, 943 users, 1,682 movies) may be
used for research but not redistributed, so this project never ships it. It is read from
a path the user gives (``u.data``, the ``ml-100k/`` folder, or RecBole's
``ml-100k.inter``, with ``u.user``/``u.item`` or ``ml-100k.user``/``.item`` beside it for
side features), from the copy inside an installed ``recbole`` wheel
(``pip install --no-deps recbole==1.2.1``; found, never imported), or fetched with
:func:`download_movielens` (for Colab).

:func:`prepare_data` follows LightFM's MovieLens example: ratings ``>= 4`` are positives,
a seeded hold-out of 10 ratings per user (:func:`holdout_split`) stands in for the
``ua.base``/``ua.test`` split, and the features are an indicator per user and per item,
plus age bucket, gender, occupation and genres (:func:`feature_matrix`).
:func:`planted_ratings` generates data of the same shape with a known low-rank structure.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import numbers
import os
import pathlib
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from optax_blockada.examples._cli import check_int

__all__ = [
  "AGE_BUCKETS",
  "DOWNLOAD_URL",
  "GENRES",
  "Categorical",
  "FeatureMatrix",
  "Ratings",
  "RecommenderData",
  "download_movielens",
  "feature_matrix",
  "find_movielens",
  "holdout_split",
  "load_movielens",
  "planted_ratings",
  "prepare_data",
]

DOWNLOAD_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
"""Where :func:`download_movielens` fetches MovieLens-100K from."""

GENRES = tuple(
  "unknown|Action|Adventure|Animation|Children's|Comedy|Crime|Documentary|Drama|Fantasy|"
  "Film-Noir|Horror|Musical|Mystery|Romance|Sci-Fi|Thriller|War|Western".split("|")
)
"""The 19 genres of MovieLens-100K, in the order of ``u.item``'s genre flags."""

AGE_BUCKETS = ((0, 17), (18, 24), (25, 34), (35, 44), (45, 49), (50, 55), (56, 200))
"""Inclusive age ranges of the user age feature (MovieLens-1M's groups)."""

Pairs = tuple[np.ndarray, np.ndarray]  # (user, item) index arrays


class Categorical(NamedTuple):
  """A categorical side feature of users or items; a row may have several values.

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples.movielens import Categorical
    >>> genre = Categorical(('Comedy', 'Drama'), np.array([[True, False], [True, True]]))
    >>> [[v for v, m in zip(genre.values, row) if m] for row in genre.member]
    [['Comedy'], ['Comedy', 'Drama']]
  """

  values: tuple[str, ...]  # the value names, one per column of `member`
  member: np.ndarray  # (n_rows, len(values)) bool: row r has value v


@dataclasses.dataclass(frozen=True)
class Ratings:
  """Explicit ratings with 0-based user and item indices and optional side features.

  Attributes:
    user: ``(n,)`` int32 user index of each rating, in ``[0, n_users)``.
    item: ``(n,)`` int32 item index of each rating, in ``[0, n_items)``.
    rating: ``(n,)`` float32 rating values.
    n_users: number of users (MovieLens: the largest user id, as ids are 1-based).
    n_items: number of items.
    user_side: side features of users by name (MovieLens: ``age``, ``gender``,
      ``occupation``), each a :class:`Categorical` with ``n_users`` rows.
    item_side: side features of items by name (MovieLens: ``genre``).
    source: where the data came from, for messages and result files.

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples.movielens import Ratings
    >>> r = Ratings(user=np.array([0, 0, 1]), item=np.array([0, 1, 1]),
    ...             rating=np.array([5.0, 3.0, 4.0]), n_users=2, n_items=2)
    >>> [a.tolist() for a in r.positives(4.0)], len(r.subset(r.user == 0))
    ([[0, 1], [0, 1]], 2)
  """

  user: np.ndarray
  item: np.ndarray
  rating: np.ndarray
  n_users: int
  n_items: int
  user_side: Mapping[str, Categorical] = dataclasses.field(default_factory=dict)
  item_side: Mapping[str, Categorical] = dataclasses.field(default_factory=dict)
  source: str = ""

  def __post_init__(self):
    n = len(self.user)
    if len(self.item) != n or len(self.rating) != n:
      raise ValueError(
        f"user, item and rating must have the same length, got {len(self.user)}, "
        f"{len(self.item)} and {len(self.rating)}."
      )
    for kind, index, size, side in (
      ("user", self.user, self.n_users, self.user_side),
      ("item", self.item, self.n_items, self.item_side),
    ):
      if n and (index.min() < 0 or index.max() >= size):
        raise ValueError(
          f"{kind} indices must lie in [0, {size}), got [{index.min()}, {index.max()}]."
        )
      for name, feature in side.items():
        if feature.member.shape != (size, len(feature.values)):
          raise ValueError(
            f"{kind}_side[{name!r}].member must have shape ({size}, {len(feature.values)}), "
            f"got {feature.member.shape}."
          )

  def __len__(self) -> int:
    return len(self.user)

  def subset(self, mask: np.ndarray) -> Ratings:
    """The ratings where ``mask`` is true (same users, items and side features)."""
    mask = np.asarray(mask, bool)
    return dataclasses.replace(
      self, user=self.user[mask], item=self.item[mask], rating=self.rating[mask]
    )

  def positives(self, min_rating: float = 4.0) -> Pairs:
    """``(user, item)`` index arrays of the ratings ``>= min_rating`` (LightFM: 4)."""
    keep = self.rating >= min_rating
    return self.user[keep], self.item[keep]


class FeatureMatrix(NamedTuple):
  """A sparse, row-normalised feature matrix in padded form.

  Row ``r`` (a user or an item) has features ``ids[r, j]`` with weights ``weights[r, j]``
  (0 in unused slots); a LightFM-style model represents it as
  ``sum_j weights[r, j] * embedding[ids[r, j]]``.

  Example:
    >>> from optax_blockada.examples.movielens import feature_matrix
    >>> f = feature_matrix(3)  # one indicator per row: matrix factorisation
    >>> f.ids.tolist(), f.weights.tolist(), f.n_features
    ([[0], [1], [2]], [[1.0], [1.0], [1.0]], 3)
  """

  ids: np.ndarray  # (n_rows, width) int32 feature ids
  weights: np.ndarray  # (n_rows, width) float32, 0 in unused slots
  names: tuple[str, ...]  # one name per feature id

  @property
  def n_features(self) -> int:
    return len(self.names)


# -- finding the files ---------------------------------------------------------------


def _recbole_folder() -> pathlib.Path | None:
  """The ml-100k folder inside an installed recbole wheel (recbole is not imported)."""
  spec = importlib.util.find_spec("recbole")
  locations = spec.submodule_search_locations if spec is not None else None
  for location in locations or ():
    folder = pathlib.Path(location, "dataset_example", "ml-100k")
    if (folder / "ml-100k.inter").is_file():
      return folder
  return None


def find_movielens(path: str | os.PathLike | None = None) -> pathlib.Path:
  """Finds MovieLens-100K's ratings file (``u.data`` or ``ml-100k.inter``).

  Args:
    path: ``u.data``, RecBole's ``ml-100k.inter``, or a folder holding either (directly or
      in an ``ml-100k/`` sub-folder); ``None``: the copy in an installed ``recbole`` wheel.

  Raises:
    FileNotFoundError: with what was tried and how to get the data.

  Example:
    >>> import pathlib, tempfile
    >>> from optax_blockada.examples.movielens import find_movielens
    >>> with tempfile.TemporaryDirectory() as d:
    ...   (pathlib.Path(d) / 'ml-100k').mkdir()
    ...   _ = (pathlib.Path(d) / 'ml-100k' / 'u.data').write_text('1\\t1\\t5\\t0\\n')
    ...   print(find_movielens(d).name)
    u.data
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
  licence forbids redistribution: keep the files out of version control.

  Raises:
    ValueError: if the archive holds no ``ml-100k/u.data``.
    OSError: if the download fails.

  Example:
    >>> from optax_blockada.examples.movielens import DOWNLOAD_URL, download_movielens
    >>> DOWNLOAD_URL
    'https://files.grouplens.org/datasets/movielens/ml-100k.zip'
    >>> # On Colab: path = download_movielens('/content/data')
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


# -- reading the files ---------------------------------------------------------------


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
  when those files sit next to the ratings.

  Args:
    path: see :func:`find_movielens` (``None``: the copy in an installed recbole wheel).

  Raises:
    FileNotFoundError: if no data is found.
    ValueError: if a file is malformed (naming the file and line).

  Example:
    >>> import pathlib, tempfile
    >>> from optax_blockada.examples.movielens import load_movielens
    >>> with tempfile.TemporaryDirectory() as d:
    ...   path = pathlib.Path(d) / 'u.data'
    ...   _ = path.write_text('1\\t2\\t5\\t881250949\\n3\\t1\\t2\\t881250950\\n')
    ...   data = load_movielens(path)
    >>> data.n_users, data.n_items, data.user.tolist(), data.item.tolist(), data.rating.tolist()
    (3, 2, [0, 2], [1, 0], [5.0, 2.0])
  """
  ratings_path = find_movielens(path)
  user_id, item_id, rating = _parse_ratings(ratings_path)
  n_users, n_items = int(user_id.max()), int(item_id.max())
  recbole = ratings_path.suffix == ".inter"
  stem = "ml-100k." if recbole else "u."
  users_path, items_path = (ratings_path.parent / f"{stem}{n}" for n in ("user", "item"))
  user_side = _read_users(users_path, recbole, n_users) if users_path.is_file() else {}
  item_side = _read_items(items_path, recbole, n_items) if items_path.is_file() else {}
  if user_side:
    n_users = user_side["age"].member.shape[0]
  if item_side:
    n_items = item_side["genre"].member.shape[0]
  described = str(ratings_path)
  if not (user_side or item_side):
    described += " (no u.user/u.item beside it: no side features)"
  return Ratings(
    user=(user_id - 1).astype(np.int32),
    item=(item_id - 1).astype(np.int32),
    rating=rating.astype(np.float32),
    n_users=n_users,
    n_items=n_items,
    user_side=user_side,
    item_side=item_side,
    source=described,
  )


# -- split, features, planted data ---------------------------------------------------


def holdout_split(
  user: np.ndarray, n_users: int, *, per_user: int = 10, seed: int = 0
) -> np.ndarray:
  """A seeded per-user hold-out: a ``(n,)`` bool mask, true for the test ratings.

  Each user with ``n_u`` ratings gives ``min(per_user, n_u // 2)`` of them, chosen
  uniformly at random (``numpy.random.default_rng(seed)``), to the test set. On
  MovieLens-100K (at least 20 ratings per user) ``per_user=10`` holds out exactly 10 per
  user, like the ``ua`` split LightFM uses.

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples.movielens import holdout_split
    >>> user = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2])
    >>> test = holdout_split(user, 3, per_user=2, seed=0)
    >>> np.bincount(user[test], minlength=3).tolist()  # min(2, n_u // 2)
    [2, 2, 0]
  """
  n_users = check_int("n_users", n_users, 1)
  per_user = check_int("per_user", per_user, 0)
  seed = check_int("seed", seed, 0)
  user = np.asarray(user)
  if user.ndim != 1 or (user.size and (user.min() < 0 or user.max() >= n_users)):
    raise ValueError(f"user must be a 1-d array of indices in [0, {n_users}).")
  key = np.random.default_rng(seed).random(user.size)
  order = np.lexsort((key, user))  # by user, then by the random key
  counts = np.bincount(user, minlength=n_users)
  starts = np.cumsum(counts) - counts
  rank = np.empty(user.size, np.int64)
  rank[order] = np.arange(user.size) - starts[user[order]]
  return rank < np.minimum(per_user, counts // 2)[user]


def feature_matrix(
  n_rows: int,
  side: Mapping[str, Categorical] | None = None,
  *,
  indicator: bool = True,
  normalize: bool = True,
  prefix: str = "",
) -> FeatureMatrix:
  """Builds a LightFM feature matrix: an indicator per row plus the side features.

  Feature ids are laid out as ``[indicator (n_rows) | side feature 1 | ...]``. With
  ``normalize`` every row's weights sum to 1, as LightFM's ``Dataset`` does by default.

  Args:
    n_rows: number of users or items.
    side: categorical side features with ``n_rows`` rows each (may be empty).
    indicator: include one indicator feature per row.
    normalize: divide each row's weights by their sum.
    prefix: prepended to the feature names (e.g. ``'user '``).

  Raises:
    ValueError: if a row would have no feature at all.

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples.movielens import Categorical, feature_matrix
    >>> genre = Categorical(('a', 'b'), np.array([[True, True], [False, True]]))
    >>> f = feature_matrix(2, {'genre': genre})
    >>> f.names
    ('0', '1', 'genre=a', 'genre=b')
    >>> f.ids.tolist(), f.weights.round(3).tolist()
    ([[0, 2, 3], [1, 3, 0]], [[0.333, 0.333, 0.333], [0.5, 0.5, 0.0]])
  """
  n_rows = check_int("n_rows", n_rows, 1)
  names = [f"{prefix}{r}" for r in range(n_rows)] if indicator else []
  id_blocks, valid_blocks = [], []
  if indicator:
    id_blocks.append(np.arange(n_rows, dtype=np.int64)[:, None])
    valid_blocks.append(np.ones((n_rows, 1), bool))
  for name, feature in (side or {}).items():
    member = np.asarray(feature.member, bool)
    if member.shape != (n_rows, len(feature.values)):
      raise ValueError(
        f"side[{name!r}].member must have shape ({n_rows}, {len(feature.values)}), "
        f"got {member.shape}."
      )
    width = int(member.sum(axis=1).max(initial=0))
    if width == 0:
      continue
    cols = np.argsort(~member, axis=1, kind="stable")[:, :width]  # a row's values first
    id_blocks.append(cols + len(names))
    valid_blocks.append(np.take_along_axis(member, cols, axis=1))
    names.extend(f"{prefix}{name}={value}" for value in feature.values)
  if not id_blocks:
    raise ValueError("a feature matrix needs indicator=True or a non-empty side feature.")
  ids, valid = np.concatenate(id_blocks, axis=1), np.concatenate(valid_blocks, axis=1)
  counts = valid.sum(axis=1)
  if np.any(counts == 0):
    raise ValueError(
      f"row {int(np.argmax(counts == 0))} has no feature; use indicator=True or give every "
      "row a side feature value."
    )
  order = np.argsort(~valid, axis=1, kind="stable")  # valid slots first, padding last
  ids, valid = np.take_along_axis(ids, order, axis=1), np.take_along_axis(valid, order, axis=1)
  weights = valid.astype(np.float64)
  if normalize:
    weights /= counts[:, None]
  return FeatureMatrix(
    np.where(valid, ids, 0).astype(np.int32), weights.astype(np.float32), tuple(names)
  )


def planted_ratings(
  n_users: int = 300,
  n_items: int = 500,
  rank: int = 8,
  *,
  ratings_per_user: int = 40,
  zipf_exponent: float = 1.0,
  n_segments: int = 6,
  n_genres: int = 8,
  seed: int = 0,
) -> Ratings:
  r"""Samples ratings with a planted low-rank structure and Zipfian item popularity.

  Users and items have latent vectors with i.i.d. :math:`\mathcal{N}(0, r^{-1/2})` entries,
  so the affinity :math:`a_{ui} = u^\top v_i` has mean 0 and standard deviation 1. Item
  ``i`` has popularity :math:`p_i \propto (i + 1)^{-s}`. Each user rates
  ``ratings_per_user`` distinct items drawn with probability :math:`\propto p_i e^{a_{ui}}`
  (Gumbel top-k), rating them :math:`\mathrm{clip}(\mathrm{round}(3 + 1.5 a_{ui}), 1, 5)`
  (about 60% are ``>= 4``). Side features carry part of the structure: a user's
  ``segment`` is the argmax of :math:`u^\top P`, an item's two ``genre`` values the top two
  of :math:`v^\top Q`, for Gaussian ``P`` and ``Q``. All randomness comes from
  ``numpy.random.default_rng(seed)``.

  Example:
    >>> import numpy as np
    >>> from optax_blockada.examples.movielens import planted_ratings
    >>> data = planted_ratings(n_users=20, n_items=30, ratings_per_user=5, seed=0)
    >>> len(data), data.n_users, data.n_items, sorted(data.item_side)
    (100, 20, 30, ['genre'])
    >>> np.bincount(data.user).tolist() == [5] * 20
    True
  """
  n_users = check_int("n_users", n_users, 1)
  n_items = check_int("n_items", n_items, 2)
  rank = check_int("rank", rank, 1)
  ratings_per_user = check_int("ratings_per_user", ratings_per_user, 1)
  if ratings_per_user > n_items:
    raise ValueError(f"ratings_per_user must be <= n_items ({n_items}), got {ratings_per_user}.")
  if isinstance(zipf_exponent, bool) or not isinstance(zipf_exponent, numbers.Real):
    raise ValueError(f"zipf_exponent must be a real number, got {zipf_exponent!r}.")
  zipf_exponent = float(zipf_exponent)
  if not 0.0 <= zipf_exponent < math.inf:
    raise ValueError(f"zipf_exponent must be finite and >= 0.0, got {zipf_exponent}.")
  n_segments = check_int("n_segments", n_segments, 1)
  n_genres = check_int("n_genres", n_genres, 2)
  seed = check_int("seed", seed, 0)

  rng = np.random.default_rng(seed)
  users = rng.standard_normal((n_users, rank)) * rank**-0.25
  items = rng.standard_normal((n_items, rank)) * rank**-0.25
  log_popularity = -zipf_exponent * np.log(np.arange(1, n_items + 1))
  affinity = users @ items.T
  gumbel = rng.gumbel(size=(n_users, n_items))
  chosen = np.argsort(-(log_popularity[None, :] + affinity + gumbel), axis=1)[:, :ratings_per_user]
  user = np.repeat(np.arange(n_users), ratings_per_user)
  item = chosen.reshape(-1)
  rating = np.clip(np.round(3.0 + 1.5 * affinity[user, item]), 1, 5)
  segment = np.argmax(users @ rng.standard_normal((rank, n_segments)), axis=1)
  top_two = np.argsort(-(items @ rng.standard_normal((rank, n_genres))), axis=1)[:, :2]
  genre_member = np.zeros((n_items, n_genres), bool)
  np.put_along_axis(genre_member, top_two, True, axis=1)
  return Ratings(
    user=user.astype(np.int32),
    item=item.astype(np.int32),
    rating=rating.astype(np.float32),
    n_users=n_users,
    n_items=n_items,
    user_side={
      "segment": Categorical(
        tuple(str(k) for k in range(n_segments)),
        np.arange(n_segments)[None, :] == segment[:, None],
      )
    },
    item_side={"genre": Categorical(tuple(str(k) for k in range(n_genres)), genre_member)},
    source=(
      f"planted ratings (n_users={n_users}, n_items={n_items}, rank={rank}, "
      f"ratings_per_user={ratings_per_user}, zipf_exponent={zipf_exponent}, seed={seed})"
    ),
  )


class RecommenderData(NamedTuple):
  """Positives, splits and features ready for training (see :func:`prepare_data`).

  Example:
    >>> from optax_blockada.examples.movielens import planted_ratings, prepare_data
    >>> data = prepare_data(planted_ratings(n_users=10, n_items=20, ratings_per_user=6))
    >>> len(data.fit[0]) + len(data.validation[0]) == len(data.train[0])
    True
  """

  n_users: int
  n_items: int
  user_features: FeatureMatrix
  item_features: FeatureMatrix
  train: Pairs  # training positives
  test: Pairs  # test positives
  fit: Pairs  # training positives minus the validation ones
  validation: Pairs  # validation positives
  source: str


def prepare_data(
  ratings: Ratings,
  *,
  min_rating: float = 4.0,
  test_per_user: int = 10,
  features: str = "indicator",
  seed: int = 0,
) -> RecommenderData:
  """Splits ratings per user, keeps the positives and builds the feature matrices.

  ``test_per_user`` ratings of each user (of any value, like MovieLens' ``ua`` split) go
  to the test set (:func:`holdout_split` with ``seed``); as many of the rest go to a
  validation set (``seed + 1``) for choosing learning rates, leaving the ``fit`` set.
  Ratings ``>= min_rating`` are the positives of each set. ``features``: ``'indicator'``
  (one feature per user and per item: matrix factorisation) or ``'hybrid'`` (indicators
  plus the side features).

  Example:
    >>> from optax_blockada.examples.movielens import planted_ratings, prepare_data
    >>> data = prepare_data(planted_ratings(n_users=10, n_items=30, ratings_per_user=8),
    ...                     test_per_user=2, features='hybrid')
    >>> data.user_features.n_features, data.item_features.n_features  # 10 + 6, 30 + 8
    (16, 38)
  """
  if features not in ("indicator", "hybrid"):
    raise ValueError(f"features must be 'indicator' or 'hybrid', got {features!r}.")
  if isinstance(min_rating, bool) or not isinstance(min_rating, (int, float)):
    raise ValueError(f"min_rating must be a number, got {min_rating!r}.")
  if ratings.n_users * ratings.n_items >= 2**31:
    raise ValueError(
      f"n_users * n_items = {ratings.n_users * ratings.n_items} is too large: the "
      "training step looks (user, item) pairs up as int32 keys."
    )
  test = holdout_split(ratings.user, ratings.n_users, per_user=test_per_user, seed=seed)
  train = ratings.subset(~test)
  validation = holdout_split(train.user, ratings.n_users, per_user=test_per_user, seed=seed + 1)
  hybrid = features == "hybrid"
  return RecommenderData(
    n_users=ratings.n_users,
    n_items=ratings.n_items,
    user_features=feature_matrix(
      ratings.n_users, ratings.user_side if hybrid else None, prefix="user "
    ),
    item_features=feature_matrix(
      ratings.n_items, ratings.item_side if hybrid else None, prefix="item "
    ),
    train=train.positives(min_rating),
    test=ratings.subset(test).positives(min_rating),
    fit=train.subset(~validation).positives(min_rating),
    validation=train.subset(validation).positives(min_rating),
    source=ratings.source,
  )
