"""A synthetic workload N× the size of ml-latest-small, written in the generic data contract.

    python -m benchmarks.workload --scale N --out DIR [--seed S] [--movielens DIR] [--force]

``DIR`` receives ``items.csv`` and ``events.csv`` (docs/data-contract.md) and ``workload.json`` (the
parameters, the source files' hashes and the shape figures). At scale N there are N× the users,
items and interactions of the MovieLens folder read at run time (``benchmarks.common.movielens_dir``);
nothing of MovieLens is stored in the repository. The method is in docs/benchmarks/workload.md:

* every real item has N variants: variant 0 is the item itself (``m-<movieId>``), variants 1..N-1
  (``m-<movieId>-<v>``) keep its genres and year, and take their title words and tags from the item
  and a donor that shares its genres;
* every real user has N copies (``u-<userId>`` and ``u-<userId>-<c>``) with the same sequence length
  and time order. Copy 0 is the real sequence; the others move the whole sequence by up to 30 days
  and swap a share of the items (``--swap-rate``) for popularity-weighted items of the same genres;
* a real item becomes variant ``(c + shift[cluster(user), item]) mod N`` in copy ``c``: users of one
  taste cluster (k-means on genre profiles) share variants, so co-occurrence survives, and each variant
  of an item gets exactly one copy of each cluster, so popularity keeps its long tail.

The output is the same, byte for byte, for the same source, seed, scale and options. Everything is
checked before anything is written (the scale, the output folder, the disk and memory it needs), and
the folder appears by rename when complete.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

from benchmarks.common import movielens_dir, own_peak_rss_mb

GENERATOR_VERSION = 1
DEFAULT_SWAP_RATE = 0.1
DEFAULT_CLUSTERS = 16
MAX_SHIFT_S = 30 * 86_400
"""Copies after the first move their whole sequence by at most this many seconds either way."""
EARLIEST_S = 788_918_400 + 86_400
"""No moved timestamp falls before 1995-01-02 (validation rejects anything before 1995)."""
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
_STREAM_CLUSTERS, _STREAM_SHIFT, _STREAM_ITEMS, _STREAM_EVENTS = 0, 1, 2, 3
_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
_ARTICLES = ("The", "A", "An", "Le", "La", "Les", "Il", "El", "Die", "Der", "Das")
_ARTICLE = re.compile(r"^(.*), (The|A|An|L'|Le|La|Les|Il|El|Die|Der|Das)$")


class WorkloadError(Exception):
    """A workload that cannot be generated; the message names the problem."""


# --------------------------------------------------------------------------- arguments


def parse_scale(text: str) -> int:
    """``--scale``: a whole number of at least 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"scale must be a whole number, got {text!r}") from None
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"scale must be a whole number, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"scale must be at least 1, got {text!r}")
    return int(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.workload", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=parse_scale, required=True, help="N: N× the users, items and interactions")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (created by rename)")
    parser.add_argument("--seed", type=int, default=0, help="same seed and scale, same bytes (default 0)")
    parser.add_argument("--movielens", type=Path, default=None, help="an ml-latest-small folder (default: shared)")
    parser.add_argument("--swap-rate", type=float, default=DEFAULT_SWAP_RATE, help="share of items swapped per copy")
    parser.add_argument("--clusters", type=int, default=DEFAULT_CLUSTERS, help="taste clusters sharing variants")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be at least 0, got {args.seed}")
    if not 0.0 <= args.swap_rate <= 1.0:
        parser.error(f"--swap-rate must be within 0..1, got {args.swap_rate}")
    if args.clusters < 1:
        parser.error(f"--clusters must be at least 1, got {args.clusters}")
    return args


# --------------------------------------------------------------------------- the base data


def _rng(seed: int, stream: int, index: int = 0):
    import numpy as np

    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def title_core(title: str) -> tuple[str, str]:
    """(the title without its year, with a trailing ", The" moved to the front; the year or "")."""
    found = _YEAR.search(title)
    year = found.group(1) if found else ""
    core = _YEAR.sub("", title).strip()
    moved = _ARTICLE.match(core)
    if moved:
        core = f"{moved.group(2)} {moved.group(1)}".replace("L' ", "L'")
    return core or title, year


def recombine_title(base: str, donor: str) -> str:
    """The first half of the base's words (at least one beside a leading article) and the second
    half of the donor's."""
    words, other = base.split(), donor.split()
    lead = 1 if len(words) > 1 and words[0] in _ARTICLES else 0  # "The Matrix" keeps "Matrix"
    head = words[: lead + max(1, (len(words) - lead + 1) // 2)]
    tail = other[len(other) // 2 :] or other
    return " ".join(head + tail)


def recombine_tags(base: list[str], donor: list[str]) -> list[str]:
    """As many tags as the base has: the first half of the base's, then the donor's, then the rest."""
    head = base[: (len(base) + 1) // 2]
    merged = list(dict.fromkeys(head + donor + base))
    return merged[: len(base)]


class Base:
    """The MovieLens folder, read once, with what the generator derives from it."""

    def __init__(self, folder: Path, clusters: int, seed: int):
        import numpy as np
        import pandas as pd

        from components.data.sources import read_movielens

        source = read_movielens(folder)
        self.source_hashes = dict(sorted(source.source_hashes.items()))
        items = source.items.sort_values("item_id").reset_index(drop=True)
        self.item_ids = items["item_id"].to_numpy(np.int64)
        self.categories = items["categories"].fillna("").astype(str).tolist()
        cores = [title_core(t) for t in items["title"].astype(str)]
        self.cores = [c for c, _ in cores]
        self.years = [y for _, y in cores]
        self.titles = items["title"].astype(str).tolist()
        self.tags = [[t for t in str(s).split("|") if t] for s in items["tags"].fillna("")]
        self.n_items = len(items)

        inter = source.interactions
        item_index = pd.Series(np.arange(self.n_items), index=self.item_ids)
        known = inter["item_id"].isin(item_index.index)
        if not known.all():
            raise WorkloadError(f"{int((~known).sum())} rating(s) in {folder} name movies missing from movies.csv")
        users = np.sort(inter["user_id"].unique())
        self.user_ids = users
        self.n_users = len(users)
        user_pos = np.searchsorted(users, inter["user_id"].to_numpy())
        item_pos = item_index.loc[inter["item_id"].to_numpy()].to_numpy()
        ts = inter["timestamp"].to_numpy(np.int64)
        order = np.lexsort((item_pos, ts, user_pos))  # each user's sequence in time order
        self.row_user = user_pos[order]
        self.row_item = item_pos[order]
        self.row_ts = ts[order]
        self.row_value = inter["value"].to_numpy(np.float64)[order]
        self.n_rows = len(order)
        self.lengths = np.bincount(self.row_user, minlength=self.n_users)
        self.popularity = np.bincount(self.row_item, minlength=self.n_items)
        self.user_first = np.full(self.n_users, np.iinfo(np.int64).max)
        np.minimum.at(self.user_first, self.row_user, self.row_ts)
        self.user_last = np.zeros(self.n_users, np.int64)
        np.maximum.at(self.user_last, self.row_user, self.row_ts)
        self.latest = int(self.row_ts.max())

        self.group = self._genre_groups()
        self.cluster = self._clusters(min(clusters, self.n_users), seed)
        self.n_clusters = int(self.cluster.max()) + 1

    def _genre_groups(self):
        """Each item's donor group: its genre set, else its first genre when the set is unique."""
        import numpy as np
        import pandas as pd

        exact = pd.Series(self.categories)
        first = exact.str.split("|").str[0]
        keys = np.where(
            exact.map(exact.value_counts()) >= 2,
            "g:" + exact,
            np.where(first.map(first.value_counts()) >= 2, "f:" + first, "i:" + exact),
        )
        return pd.factorize(pd.Series(keys), sort=True)[0]

    def _clusters(self, k: int, seed: int):
        """k-means (Lloyd, 20 rounds) on each user's genre shares: similar users, one cluster."""
        import numpy as np

        genres = sorted({g for c in self.categories for g in c.split("|") if g})
        index = {g: i for i, g in enumerate(genres)}
        item_genres = np.zeros((self.n_items, max(1, len(genres))))
        for row, cats in enumerate(self.categories):
            for g in cats.split("|"):
                if g:
                    item_genres[row, index[g]] = 1.0
        profile = np.zeros((self.n_users, item_genres.shape[1]))
        np.add.at(profile, self.row_user, item_genres[self.row_item])
        profile /= np.maximum(profile.sum(axis=1, keepdims=True), 1.0)
        rng = _rng(seed, _STREAM_CLUSTERS)
        centres = profile[np.sort(rng.choice(self.n_users, size=k, replace=False))]
        assign = np.zeros(self.n_users, np.int64)
        for _ in range(20):
            distance = ((profile[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
            assign = distance.argmin(axis=1)
            for j in range(k):
                members = profile[assign == j]
                if len(members):
                    centres[j] = members.mean(axis=0)
        return np.unique(assign, return_inverse=True)[1].astype(np.int64)

    # ----------------------------------------------------------------- estimates

    def estimate_bytes(self, scale: int) -> int:
        """The output's size on disk, rounded up: the base's CSV rows with longer ids, × scale."""
        suffix = 1 + len(str(scale - 1)) if scale > 1 else 0
        uid = sum(len(f"u-{u}") * int(n) for u, n in zip(self.user_ids, self.lengths, strict=True))
        iid = sum(len(f"m-{i}") * int(n) for i, n in zip(self.item_ids, self.popularity, strict=True))
        events = uid + iid + self.n_rows * (len(str(self.latest)) + len(",rating,") + 4 + 2 + 2 * suffix)
        items = sum(len(t) + len(c) + 30 for t, c in zip(self.titles, self.categories, strict=True))
        items += sum(len("|".join(t)) + 2 for t in self.tags) * 2
        return int(1.15 * scale * (events + items + self.n_items * suffix)) + 65_536

    def estimate_peak_bytes(self, scale: int) -> int:
        """Peak memory: what is resident now, one copy's frames (strings included), and the arrays
        that grow with the scale (popularity counts, lengths, the variant shift table)."""
        import resource

        now = _current_rss_bytes() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        chunk = self.n_rows * 400 + self.n_items * 700
        per_scale = scale * (self.n_items * 8 * 2 + self.n_users * 8) + self.n_clusters * self.n_items * 8
        return int(now + 1.5 * chunk + per_scale)


def _current_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return 0


def available_memory_bytes() -> int:
    """MemAvailable, else free physical pages."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # pragma: no cover


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_output_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise WorkloadError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise WorkloadError(f"--out {out} exists and is not empty; pass --force to replace it")


def check_fits(base: Base, scale: int, out: Path) -> dict:
    """Raise ``WorkloadError`` unless the output fits the free disk at ``out`` and the peak the
    available memory; return the estimates."""
    need_disk, free = base.estimate_bytes(scale), free_disk_bytes(out)
    need_ram, avail = base.estimate_peak_bytes(scale), available_memory_bytes()
    if need_disk > free:
        raise WorkloadError(
            f"scale {scale} does not fit on disk: the output needs about {_gib(need_disk)} "
            f"but only {_gib(free)} is free at {out}"
        )
    if need_ram > avail:
        raise WorkloadError(
            f"scale {scale} does not fit in memory: generating it needs about {_gib(need_ram)} "
            f"but only {_gib(avail)} is available"
        )
    return {"disk_bytes": need_disk, "peak_memory_bytes": need_ram}


# --------------------------------------------------------------------------- generation


def _pick_other(group, eligible, u, step: int = 0):
    """For each item, another eligible item of its group: the one ``u`` in [0, 1) picks, moved on
    by ``step`` places, so steps 0, 1, ... go through the other members without repeating one
    (itself when its group has no other eligible item); -1 for items that are not eligible."""
    import numpy as np

    n = len(group)
    pick = np.full(n, -1, np.int64)
    members = np.flatnonzero(eligible)
    if not len(members):
        return pick
    order = members[np.lexsort((members, group[members]))]
    codes = group[order]
    starts = np.searchsorted(codes, codes, side="left")
    sizes = np.searchsorted(codes, codes, side="right") - starts
    position = np.arange(len(order)) - starts
    others = np.maximum(sizes - 1, 1)
    r = (np.minimum((u[order] * others).astype(np.int64), others - 1) + step) % others
    r = r + (r >= position)
    other = order[np.minimum(starts + r, len(order) - 1)]
    pick[order] = np.where(sizes >= 2, other, order)
    return pick


def item_rows(base: Base, variant: int, seed: int):
    """The items frame of one variant: the real items for 0, recombined ones otherwise."""
    import numpy as np
    import pandas as pd

    ids = [f"m-{i}" if variant == 0 else f"m-{i}-{variant}" for i in base.item_ids]
    if variant == 0:
        titles, tags = base.titles, ["|".join(t) for t in base.tags]
    else:
        rng = _rng(seed, _STREAM_ITEMS)  # one draw per item; each variant steps to the next donor
        start_title, start_tags = rng.random(base.n_items), rng.random(base.n_items)
        title_donor = _pick_other(base.group, np.ones(base.n_items, bool), start_title, variant - 1)
        has_tags = np.array([bool(t) for t in base.tags])
        tag_donor = _pick_other(base.group, has_tags, start_tags, variant - 1)
        titles, tags = [], []
        for i in range(base.n_items):
            title = recombine_title(base.cores[i], base.cores[title_donor[i]])
            titles.append(f"{title} ({base.years[i]})" if base.years[i] else title)
            mixed = recombine_tags(base.tags[i], base.tags[tag_donor[i]]) if tag_donor[i] >= 0 else []
            tags.append("|".join(mixed))
    return pd.DataFrame({"item_id": ids, "title": titles, "categories": base.categories, "tags": tags})


def _swap(base: Base, items, rng, rate: float):
    """Replace about ``rate`` of the rows' items by popularity-weighted items of the same donor
    group (so each item's expected count is unchanged); a swap that would repeat an item within
    a user's sequence is undone."""
    import numpy as np
    import pandas as pd

    swapped = items.copy()
    chosen = rng.random(len(items)) < rate
    if not chosen.any():
        return swapped
    order = np.lexsort((np.arange(base.n_items), base.group))
    weights = np.cumsum(base.popularity[order].astype(np.float64))
    codes = base.group[order]
    first = np.searchsorted(codes, np.arange(codes.max() + 1), side="left")
    last = np.searchsorted(codes, np.arange(codes.max() + 1), side="right") - 1
    g = base.group[items[chosen]]
    low = np.where(first[g] > 0, weights[np.maximum(first[g] - 1, 0)], 0.0)
    high = weights[last[g]]
    target = low + rng.random(int(chosen.sum())) * (high - low)
    picked = np.minimum(np.searchsorted(weights, target, side="right"), last[g])
    swapped[chosen] = order[picked]
    while True:  # undo swaps that repeat an item within one user's sequence
        moved = swapped != items
        repeat = pd.DataFrame({"u": base.row_user, "i": swapped}).duplicated(keep=False).to_numpy()
        undo = repeat & moved
        if not undo.any():
            return swapped
        swapped[undo] = items[undo]


def event_rows(base: Base, copy: int, scale: int, shift, seed: int, swap_rate: float):
    """The events frame of one copy of every real user, and its rows' synthetic item indices."""
    import numpy as np
    import pandas as pd

    rng = _rng(seed, _STREAM_EVENTS, copy)
    items, ts = base.row_item, base.row_ts
    if copy > 0:
        items = _swap(base, items, rng, swap_rate)
        offset = rng.integers(-MAX_SHIFT_S, MAX_SHIFT_S + 1, size=base.n_users)
        low, high = EARLIEST_S - base.user_first, base.latest - base.user_last
        offset = np.where(low <= high, np.clip(offset, low, high), 0)
        ts = ts + offset[base.row_user]
    variant = (copy + shift[base.cluster[base.row_user], items]) % scale
    users = [f"u-{u}" if copy == 0 else f"u-{u}-{copy}" for u in base.user_ids]
    item_names = np.array([f"m-{i}" for i in base.item_ids], dtype=object)[items]
    suffix = np.array([""] + [f"-{v}" for v in range(1, scale)], dtype=object) if scale > 1 else np.array([""])
    frame = pd.DataFrame(
        {
            "user_id": np.array(users, dtype=object)[base.row_user],
            "item_id": item_names + suffix[variant],
            "timestamp": ts,
            "event": "rating",
            "value": base.row_value,
        }
    )
    return frame, variant * base.n_items + items


# --------------------------------------------------------------------------- shape figures


def gini(counts) -> float:
    """The Gini coefficient of item popularity (0: even, towards 1: concentrated)."""
    import numpy as np

    x = np.sort(np.asarray(counts, dtype=np.float64))
    if not len(x) or x.sum() == 0:
        return 0.0
    n = len(x)
    return float(2.0 * np.sum(np.arange(1, n + 1) * x) / (n * x.sum()) - (n + 1) / n)


def top_share(counts, share: float = 0.01) -> float:
    """The share of interactions that the most popular ``share`` of items receives (at least one item)."""
    import numpy as np

    x = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    k = max(1, math.ceil(share * len(x)))
    return float(x[:k].sum() / max(x.sum(), 1.0))


def length_quantiles(lengths) -> dict[str, float]:
    import numpy as np

    values = np.quantile(np.asarray(lengths, dtype=np.float64), QUANTILES, method="inverted_cdf")
    return {f"p{round(q * 100)}": float(v) for q, v in zip(QUANTILES, values, strict=True)}


def shape(popularity, lengths, n_items: int) -> dict:
    return {
        "users": int(len(lengths)),
        "items": int(n_items),
        "interactions": int(sum(lengths)),
        "popularity_gini": round(gini(popularity), 4),
        "top_1pct_share": round(top_share(popularity), 4),
        "length_quantiles": length_quantiles(lengths),
    }


# --------------------------------------------------------------------------- writing


def _write_csv(frame, path: Path, first: bool) -> None:
    frame.to_csv(path, mode="w" if first else "a", header=first, index=False, lineterminator="\n")


def generate(base: Base, scale: int, seed: int, swap_rate: float, folder: Path) -> dict:
    """Write items.csv, events.csv and workload.json into ``folder``; return the workload record."""
    import numpy as np

    from components.data.atomic import fsync_file

    for variant in range(scale):
        _write_csv(item_rows(base, variant, seed), folder / "items.csv", variant == 0)
    shift = _rng(seed, _STREAM_SHIFT).integers(0, scale, size=(base.n_clusters, base.n_items))
    popularity = np.zeros(scale * base.n_items, np.int64)
    for copy in range(scale):
        frame, synthetic_items = event_rows(base, copy, scale, shift, seed, swap_rate)
        _write_csv(frame, folder / "events.csv", copy == 0)
        popularity += np.bincount(synthetic_items, minlength=len(popularity))
    lengths = np.tile(base.lengths, scale)
    record = {
        "generator_version": GENERATOR_VERSION,
        "scale": scale,
        "seed": seed,
        "swap_rate": swap_rate,
        "clusters": base.n_clusters,
        "source_sha256": base.source_hashes,
        "files": {"items": "items.csv", "interactions": "events.csv"},
        "original": shape(base.popularity, base.lengths, base.n_items),
        "synthetic": shape(popularity, lengths, scale * base.n_items),
    }
    (folder / "workload.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name in ("items.csv", "events.csv", "workload.json"):
        fsync_file(folder / name)
    return record


def summary_lines(record: dict, seconds: float, cpu_seconds: float, peak_mb: float) -> list[str]:
    original, synthetic = record["original"], record["synthetic"]
    lines = [
        f"workload: scale {record['scale']}, seed {record['seed']}, swap rate {record['swap_rate']}, "
        f"{record['clusters']} taste clusters",
        f"{'':24}{'original':>14}{'synthetic':>14}",
    ]
    for key in ("users", "items", "interactions"):
        lines.append(f"{key:24}{original[key]:>14,}{synthetic[key]:>14,}")
    for key, label in (("popularity_gini", "popularity Gini"), ("top_1pct_share", "top-1% item share")):
        lines.append(f"{label:24}{original[key]:>14.4f}{synthetic[key]:>14.4f}")
    for q, value in original["length_quantiles"].items():
        lines.append(f"{'sequence length ' + q:24}{value:>14.1f}{synthetic['length_quantiles'][q]:>14.1f}")
    lines.append(f"took {seconds:.1f} s ({cpu_seconds:.1f} s CPU), peak RSS {peak_mb:.0f} MiB")
    return lines


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started, started_cpu = time.perf_counter(), time.process_time()
    from benchmarks.common import quiet_environment

    quiet_environment()
    from components.data.atomic import atomic_dir
    from components.errors import SourceError

    folder = args.movielens or movielens_dir()
    out: Path = args.out
    try:
        check_output_dir(out, args.force)
        if not (folder / "ratings.csv").exists():
            raise WorkloadError(f"no MovieLens data at {folder} (ratings.csv is missing); pass --movielens")
        try:
            base = Base(folder, args.clusters, args.seed)
        except SourceError as exc:
            raise WorkloadError(str(exc)) from exc
        estimates = check_fits(base, args.scale, out)
    except WorkloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    with atomic_dir(out) as tmp:
        record = generate(base, args.scale, args.seed, args.swap_rate, tmp)
    seconds, cpu_seconds, peak = time.perf_counter() - started, time.process_time() - started_cpu, own_peak_rss_mb()
    for line in summary_lines(record, seconds, cpu_seconds, peak):
        print(line)
    print(
        f"estimated {_gib(estimates['disk_bytes'])} on disk (wrote "
        f"{_gib(sum(p.stat().st_size for p in out.iterdir()))}), peak {_gib(estimates['peak_memory_bytes'])}"
    )
    return {**record, "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_mb": peak, "estimates": estimates}


if __name__ == "__main__":
    main()
