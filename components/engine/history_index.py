"""The bundle's per-user history index: CSR arrays in ``.npy`` files, memory-mapped, read per user.

A bundle's ``histories/`` folder holds every user's training history as columns sorted by user:

========================  ====================================================================
``index.json``            format, id type, counts, the event names (``events.npy`` holds codes)
``users.npy``             the user ids, sorted: ``int64``, or fixed-width unicode for string ids
``offsets.npy``           ``int64``, users + 1: user ``j``'s rows are ``offsets[j]:offsets[j + 1]``
``items.npy``             catalogue indexes (``int32``; ``int64`` past 2**31 items)
``events.npy``            codes into ``index.json``'s ``events`` (``uint8``; ``uint16`` past 255)
``values.npy``            ``float32`` when every value is exact in it, else ``float64`` (NaN: none)
``timestamps.npy``        ``int64`` seconds
========================  ====================================================================

:class:`HistoryIndex` opens the arrays with ``np.load(mmap_mode="r")``: opening reads the small
``index.json`` and the array headers only, and a :class:`History` is built when a user is looked up
(a binary search in ``users.npy``, then one slice of each column). A serving replica therefore holds
the pages of the users it has answered, not every user's history, and starts in the same time at any
user count. Users dropped for an erasure are kept in a set on top of the read-only arrays; the purge
retires the bundles that still hold them on disk (``components.privacy.purge``).

Bundles written before the index carry ``histories.parquet`` (one row per interaction) instead;
:func:`open_histories` reads it into the same arrays in memory (compact columns, not one object per
user), because the registered bundle's content hash forbids rewriting it in place.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from components.data.dataset import History

INDEX_DIR = "histories"
"""The index's folder inside a bundle."""
INDEX_JSON = "index.json"
LEGACY_FILE = "histories.parquet"
"""The one-row-per-interaction file of bundles written before the index."""
FORMAT = 1
COLUMNS = ("users", "offsets", "items", "events", "values", "timestamps")
_ITER_CHUNK = 65_536


class HistoryIndexError(ValueError):
    """A history index that cannot be written or read; the message names the file and the problem."""


def _user_array(user_ids, id_type: str) -> np.ndarray:
    """User ids as the index stores them: ``int64``, or unicode as wide as the longest id."""
    original = user_ids.tolist() if isinstance(user_ids, np.ndarray) else list(user_ids)
    raw = np.asarray(user_ids) if isinstance(user_ids, np.ndarray) else np.asarray(original, dtype=object)
    if id_type == "int":
        if raw.dtype.kind in "iu" or len(raw) == 0:
            return raw.astype(np.int64)
        try:
            return np.asarray([int(u) for u in raw.tolist()], dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise HistoryIndexError(f"id_type is 'int' but a user id is not a 64-bit integer: {exc}") from None
    if id_type != "str":
        raise HistoryIndexError(f"unknown id_type {id_type!r}: expected 'int' or 'str'")
    if any("\x00" in str(u) for u in original):  # numpy's unicode arrays drop trailing NULs
        raise HistoryIndexError("a user id contains a NUL character, which the index cannot store")
    return raw.astype(str) if len(raw) else np.zeros(0, dtype="<U1")


def write_history_index(
    folder: Path, user_ids: Sequence, histories: Sequence[History], id_type: str, n_items: int | None = None
) -> Path:
    """Write the index of ``histories`` (aligned with ``user_ids``) into ``folder`` (created; the
    bundle writer makes the whole bundle appear atomically). Item indexes must lie in
    ``[0, n_items)`` when ``n_items`` is given. Returns the folder."""
    if len(user_ids) != len(histories):
        raise HistoryIndexError(f"{len(user_ids)} user ids for {len(histories)} histories")
    users = _user_array(user_ids, id_type)
    order = np.argsort(users, kind="stable")
    users = users[order]
    if len(users) > 1 and (users[1:] == users[:-1]).any():
        duplicate = users[1:][users[1:] == users[:-1]][0]
        raise HistoryIndexError(f"user id {duplicate.item()!r} has more than one history")
    ordered = [histories[i] for i in order]
    lengths = np.fromiter((len(h) for h in ordered), dtype=np.int64, count=len(ordered))
    offsets = np.zeros(len(ordered) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])

    def column(name, dtype):
        parts = [np.asarray(getattr(h, name), dtype=dtype) for h in ordered]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    items = column("items", np.int64)
    stamps = column("timestamps", np.int64)
    values = column("values", np.float64)
    names: dict[str, int] = {}
    codes = np.fromiter(
        (names.setdefault(str(e), len(names)) for h in ordered for e in h.events),
        dtype=np.int64,
        count=int(offsets[-1]),
    )
    if len(items) and (items.min() < 0 or (n_items is not None and items.max() >= n_items)):
        bad = int(items.min()) if items.min() < 0 else int(items.max())
        allowed = f"0..{n_items - 1}" if n_items is not None else "non-negative indexes"
        raise HistoryIndexError(f"a history holds the item index {bad}, outside the catalogue ({allowed})")
    narrow = values.astype(np.float32)
    if np.array_equal(narrow.astype(np.float64), values, equal_nan=True):
        values = narrow
    items = items.astype(np.int32) if not len(items) or items.max() < 2**31 else items
    codes = codes.astype(np.uint8 if len(names) <= 256 else np.uint16)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(COLUMNS, (users, offsets, items, codes, values, stamps)):
        np.save(folder / f"{name}.npy", array, allow_pickle=False)
    meta = {"format": FORMAT, "id_type": id_type, "users": len(users), "rows": int(offsets[-1]), "events": list(names)}
    (folder / INDEX_JSON).write_text(json.dumps(meta, indent=2))
    return folder


class HistoryIndex:
    """Every user's history, read per user from the index's columns; a read-only mapping of
    normalised user id → :class:`History`, minus the users :meth:`drop` removed."""

    def __init__(self, columns: dict[str, np.ndarray], id_type: str, events: list[str], where: str = "index"):
        self.id_type, self.events, self.where = id_type, list(events), where
        self.users, self.offsets = columns["users"], columns["offsets"]
        self.items, self.codes = columns["items"], columns["events"]
        self.values, self.timestamps = columns["values"], columns["timestamps"]
        self.dropped: set = set()
        self._check()

    # -- opening
    @classmethod
    def open(cls, folder: Path) -> HistoryIndex:
        """Open the index in ``folder`` memory-mapped; raises :class:`HistoryIndexError` naming what is wrong."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / INDEX_JSON).read_text())
        except FileNotFoundError:
            raise HistoryIndexError(f"{folder / INDEX_JSON} is missing") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise HistoryIndexError(f"{folder / INDEX_JSON} cannot be read: {exc}") from None
        if meta.get("format") != FORMAT:
            raise HistoryIndexError(f"{folder / INDEX_JSON}: format {meta.get('format')!r}, this code reads {FORMAT}")
        columns = {}
        for name in COLUMNS:
            path = folder / f"{name}.npy"
            try:
                columns[name] = np.load(path, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise HistoryIndexError(f"{path} is missing") from None
            except (OSError, ValueError) as exc:
                raise HistoryIndexError(f"{path} cannot be read: {exc}") from None
        index = cls(columns, meta.get("id_type", "int"), meta.get("events", []), where=str(folder))
        if len(index.users) != meta.get("users") or index.rows != meta.get("rows"):
            raise HistoryIndexError(f"{folder}: the arrays do not match the counts in {INDEX_JSON}")
        return index

    @classmethod
    def from_parquet(cls, path: Path, id_type: str) -> HistoryIndex:
        """The same index, in memory, from a ``histories.parquet`` of a bundle written before the index."""
        import pandas as pd

        try:
            frame = pd.read_parquet(path, columns=["user_id", "item_index", "event", "value", "timestamp"])
        except (OSError, ValueError, KeyError) as exc:
            raise HistoryIndexError(f"{path} cannot be read: {exc}") from None
        users = _user_array(frame["user_id"].to_numpy(), id_type)
        order = np.argsort(users, kind="stable")  # keeps each user's rows in their written (time) order
        users = users[order]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
        offsets = np.r_[starts, len(users)].astype(np.int64)
        names, codes = np.unique(frame["event"].to_numpy(dtype=object)[order].astype(str), return_inverse=True)
        columns = {
            "users": users[starts],
            "offsets": offsets,
            "items": frame["item_index"].to_numpy(dtype=np.int64)[order],
            "events": codes.astype(np.int64).reshape(-1),
            "values": frame["value"].to_numpy(dtype=np.float64)[order],
            "timestamps": frame["timestamp"].to_numpy(dtype=np.int64)[order],
        }
        return cls(columns, id_type, names.tolist(), where=str(path))

    def _check(self) -> None:
        rows = self.rows
        if len(self.offsets) != len(self.users) + 1 or int(self.offsets[0]) != 0 or int(self.offsets[-1]) != rows:
            raise HistoryIndexError(
                f"{self.where}: offsets do not cover the rows ({len(self.users)} users, {rows} rows)"
            )
        if not (len(self.codes) == len(self.values) == len(self.timestamps) == rows):
            raise HistoryIndexError(f"{self.where}: the columns have different lengths")
        if self.id_type == "int" and self.users.dtype != np.int64:
            raise HistoryIndexError(f"{self.where}: integer ids stored as {self.users.dtype}")
        if self.id_type == "str" and self.users.dtype.kind != "U":
            raise HistoryIndexError(f"{self.where}: string ids stored as {self.users.dtype}")

    @property
    def rows(self) -> int:
        return int(len(self.items))

    # -- lookup
    def position(self, user) -> int | None:
        """The user's row in ``users`` (dropped users included), or None."""
        if self.id_type == "int":
            if isinstance(user, bool) or not isinstance(user, int | np.integer):
                return None
            try:
                key = np.int64(user)
            except OverflowError:
                return None
        else:
            if not isinstance(user, str) or len(user) > self.users.dtype.itemsize // 4:
                return None
            key = np.array(user, dtype=self.users.dtype)  # the array's own width: no copy of the array
        at = int(np.searchsorted(self.users, key))
        return at if at < len(self.users) and self.users[at] == key else None

    def rows_of(self, user) -> int:
        """How many interactions the index holds for ``user`` on disk (dropped users included)."""
        at = self.position(user)
        return 0 if at is None else int(self.offsets[at + 1] - self.offsets[at])

    def rows_of_text(self, user_id: str) -> int:
        """:meth:`rows_of` for an id given as text (as an audit receives it)."""
        if self.id_type == "int":
            try:
                number = int(user_id)
            except ValueError:
                return 0
            return self.rows_of(number) if str(number) == user_id else 0
        return self.rows_of(user_id)

    def user_ids(self) -> np.ndarray:
        """Every user id on disk, dropped ones included (for the purge and the audit)."""
        return np.asarray(self.users)

    def get(self, user, default=None, *, newest: int | None = None) -> History | None:
        """The user's history (only its ``newest`` interactions when given), else ``default``."""
        if user in self.dropped:
            return default
        at = self.position(user)
        if at is None:
            return default
        start, stop = int(self.offsets[at]), int(self.offsets[at + 1])
        if newest is not None:
            start = max(start, stop - max(int(newest), 0))
        names = self.events
        return History(
            np.array(self.items[start:stop], dtype=np.int64),
            [names[c] for c in self.codes[start:stop].tolist()],
            np.array(self.values[start:stop], dtype=np.float64),
            np.array(self.timestamps[start:stop], dtype=np.int64),
        )

    def __getitem__(self, user) -> History:
        history = self.get(user)
        if history is None:
            raise KeyError(user)
        return history

    def __contains__(self, user) -> bool:
        return user not in self.dropped and self.position(user) is not None

    def __len__(self) -> int:
        return len(self.users) - len(self.dropped)

    def __iter__(self) -> Iterator:
        """The user ids (plain ints or strs), sorted, without dropped users; read a chunk at a time."""
        for start in range(0, len(self.users), _ITER_CHUNK):
            for user in self.users[start : start + _ITER_CHUNK].tolist():
                if user not in self.dropped:
                    yield user

    def keys(self) -> Iterator:
        return iter(self)

    # -- erasure
    def drop(self, users) -> list:
        """Stop answering for ``users`` (an erasure; the files are read-only); returns those that were held."""
        held = [u for u in users if u in self]
        self.dropped.update(held)
        return held


def open_histories(bundle: Path, id_type: str) -> HistoryIndex:
    """The bundle's histories: its ``histories/`` index memory-mapped, else its older ``histories.parquet``."""
    bundle = Path(bundle)
    if (bundle / INDEX_DIR).is_dir():
        index = HistoryIndex.open(bundle / INDEX_DIR)
        if index.id_type != id_type:
            raise HistoryIndexError(f"{bundle / INDEX_DIR}: ids of type {index.id_type!r}, the bundle says {id_type!r}")
        return index
    if (bundle / LEGACY_FILE).exists():
        return HistoryIndex.from_parquet(bundle / LEGACY_FILE, id_type)
    raise HistoryIndexError(f"{bundle} holds no histories: neither {INDEX_DIR}/{INDEX_JSON} nor {LEGACY_FILE}")


def find_history_indexes(root: Path) -> list[Path]:
    """Every history index folder under ``root`` (bundles in run folders, artifact stores)."""
    root = Path(root)
    if not root.exists():
        return []
    return sorted(p.parent for p in root.rglob(INDEX_JSON) if p.parent.name == INDEX_DIR)
