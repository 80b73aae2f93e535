"""Team-draft interleaving (Radlinski, Kurup and Joachims, 2008) and its click credit.

Both rankings are merged into one list: in each round the team with fewer picks so far (a coin flip on a
tie) adds its best item not yet in the list. Each position remembers the team that placed it; a click on
it is credited to that team. Per impression, the team with more credited clicks wins; impressions with no
clicks or a tie tell nothing. Against a split, every impression compares both rankings on the same user
at the same moment, so far less traffic decides.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence

from components.experiments.assignment import CHALLENGER, CHAMPION


def team_draft(champion: Sequence[Hashable], challenger: Sequence[Hashable], k: int, seed: str) -> tuple[list, list]:
    """The interleaved top-``k`` and, per position, the team (``champion``/``challenger``) that placed it.

    ``seed`` (the recommendation id) fixes the coin flips, so a list can be rebuilt from its id.
    """
    rng = random.Random(seed)
    lists = {CHAMPION: list(champion), CHALLENGER: list(challenger)}
    cursor = {CHAMPION: 0, CHALLENGER: 0}
    picks = {CHAMPION: 0, CHALLENGER: 0}
    items: list = []
    teams: list[str] = []
    seen: set = set()
    limit = min(k, len(set(champion) | set(challenger)))
    while len(items) < limit:
        if picks[CHAMPION] != picks[CHALLENGER]:
            team = CHAMPION if picks[CHAMPION] < picks[CHALLENGER] else CHALLENGER
        else:
            team = CHAMPION if rng.random() < 0.5 else CHALLENGER
        ranking = lists[team]
        while cursor[team] < len(ranking) and ranking[cursor[team]] in seen:
            cursor[team] += 1
        if cursor[team] >= len(ranking):  # this team has nothing new left: the other one places
            team = CHALLENGER if team == CHAMPION else CHAMPION
            ranking = lists[team]
            while cursor[team] < len(ranking) and ranking[cursor[team]] in seen:
                cursor[team] += 1
            if cursor[team] >= len(ranking):
                break
        item = ranking[cursor[team]]
        seen.add(item)
        items.append(item)
        teams.append(team)
        picks[team] += 1
    return items, teams


def credit(teams: Sequence[str], clicked_positions: Sequence[int]) -> dict[str, int]:
    """Clicks per team for one interleaved impression."""
    counts = {CHAMPION: 0, CHALLENGER: 0}
    for position in clicked_positions:
        counts[teams[position]] += 1
    return counts
