"""Item text: the template that turns an item row into the text the encoder reads, and its hash."""

from __future__ import annotations

import hashlib

import pandas as pd

from components.data.columns import CATEGORIES_COL, DESCRIPTION_COL, TAGS_COL, TITLE_COL

ITEM_TEXT_SEGMENTS = ("{title}", "Genres: {categories}", "Tags: {tags}", "{description}")
"""The item text template: segments whose fields are empty are dropped, the rest joined by '. '."""


def compose_item_text(row: dict, segments: tuple[str, ...] = ITEM_TEXT_SEGMENTS) -> str:
    """One item's text: "Title (year). Genres: a, b. Tags: x, y. description"."""
    fields = {
        "title": str(row.get(TITLE_COL) or "").strip(),
        "categories": ", ".join(p for p in str(row.get(CATEGORIES_COL) or "").split("|") if p),
        "tags": ", ".join(p for p in str(row.get(TAGS_COL) or "").split("|") if p),
        "description": str(row.get(DESCRIPTION_COL) or "").strip(),
    }
    parts = []
    for segment in segments:
        names = [name for name in fields if "{" + name + "}" in segment]
        if names and all(fields[name] for name in names):
            parts.append(segment.format(**fields))
    return ". ".join(parts)


def item_texts(items: pd.DataFrame) -> list[str]:
    return [compose_item_text(row) for row in items.to_dict("records")]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
