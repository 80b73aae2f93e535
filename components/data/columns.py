"""Column names shared by every stage, so no module spells them on its own."""

ITEM_COL = "item_id"
TITLE_COL = "title"
DESCRIPTION_COL = "description"
CATEGORIES_COL = "categories"
TAGS_COL = "tags"
YEAR_COL = "year"

USER_COL = "user_id"
TIMESTAMP_COL = "timestamp"
EVENT_COL = "event"
VALUE_COL = "value"
EVENT_ID_COL = "event_id"
SOURCE_COL = "source"

ITEM_COLUMNS = [ITEM_COL, TITLE_COL, YEAR_COL, CATEGORIES_COL, TAGS_COL, DESCRIPTION_COL]
INTERACTION_COLUMNS = [EVENT_ID_COL, USER_COL, ITEM_COL, TIMESTAMP_COL, EVENT_COL, VALUE_COL, SOURCE_COL]
