"""The clip catalog: one typed Parquet table, queried with DuckDB, that makes every clip findable.

Dashcam data is useless until it is labelled and searchable. The catalog holds every clip
with its metadata, its human label (if any) and its latest baseline and fine-tuned captions,
with the 15 answer fields flattened into columns so that a person can ask for "rainy night
clips with pedestrians" (`search(db, 'weather~rain night pedestrians')`).

Storage choices:
- `human_label`, `baseline_caption`, `finetuned_caption` are JSON text (VARCHAR).
- `interactive_expanded_metaaction` and `batches` are VARCHAR[] (DuckDB lists).
- `rule_violation`/`interesting_scenario` keep the recipe's "True"/"False" strings; the
  BOOLEAN columns `rule_violation_flag`/`is_interesting` are the searchable form.
- Derived flags are NULL when the clip has no answer from any source (unknown, not False).

The query language is parsed into a parameterised WHERE clause: user values never become SQL.

The table lives in the state store (`CATALOG`), so `avdag search` works from any machine that
reaches it: DuckDB queries a node-local copy of the file (the stored file itself locally).
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from avdag.core.common.atomic import atomic_path
from avdag.core.common.labels import (
    BOOLEAN_FIELDS,
    CATEGORICAL_FIELDS,
    FIELDS,
    METAACTIONS,
    canonical_boolean,
    canonical_choice,
)
from avdag.core.common.state_store import StateStore

TABLE = "clips"
ASSET_NAME = "clip_catalog"
CATALOG = "catalog/clips.parquet"  # the state-store key of the table
CAPTION_SOURCES = ("baseline", "finetuned")

# column -> (DuckDB type, query kind). Order is the table's column order.
_METADATA_COLUMNS: dict[str, tuple[str, str]] = {
    "clip_id": ("VARCHAR", "text"),
    "batch": ("VARCHAR", "text"),
    "batches": ("VARCHAR[]", "list"),
    "source_url": ("VARCHAR", "text"),
    "drive_id": ("VARCHAR", "text"),  # a clip cut from a drive recording: the drive and the time range
    "drive_start_s": ("DOUBLE", "number"),
    "drive_end_s": ("DOUBLE", "number"),
    "near_duplicate_of": ("VARCHAR", "text"),
    "duration_s": ("DOUBLE", "number"),
    "fps": ("DOUBLE", "number"),
    "width": ("INTEGER", "number"),
    "height": ("INTEGER", "number"),
    "codec": ("VARCHAR", "text"),
    "size_bytes": ("BIGINT", "number"),
    "sha256": ("VARCHAR", "text"),
    "split": ("VARCHAR", "text"),
    "human_label": ("VARCHAR", "text"),
    "baseline_caption": ("VARCHAR", "text"),
    "finetuned_caption": ("VARCHAR", "text"),
    "baseline_raw": ("VARCHAR", "text"),
    "finetuned_raw": ("VARCHAR", "text"),
    "finetuned_model_hash": ("VARCHAR", "text"),
    "answer_source": ("VARCHAR", "text"),
}
_ANSWER_COLUMNS: dict[str, tuple[str, str]] = {
    field: ("VARCHAR[]", "list")
    if field == "interactive_expanded_metaaction"
    else ("INTEGER", "number")
    if field == "driving_difficulty"
    else ("VARCHAR", "text")
    for field in FIELDS
}
_FLAG_COLUMNS: dict[str, tuple[str, str]] = {
    name: ("BOOLEAN", "bool")
    for name in ("has_pedestrians", "has_traffic_light", "is_night", "is_interesting", "rule_violation_flag")
}
# Lower-case-insensitive haystack for bare words; not shown by default, not a query field.
SEARCH_TEXT = "search_text"
_SEARCH_TEXT = SEARCH_TEXT
COLUMNS: dict[str, tuple[str, str]] = {**_METADATA_COLUMNS, **_ANSWER_COLUMNS, **_FLAG_COLUMNS}
QUERY_COLUMNS = {**COLUMNS, SEARCH_TEXT: ("VARCHAR", "text")}  # what a query may name

DEFAULT_SEARCH_COLUMNS = (
    "clip_id",
    "batch",
    "split",
    "answer_source",
    "weather",
    "lighting",
    "road_type",
    "driving_difficulty",
    "has_pedestrians",
    "is_interesting",
    "duration_s",
    "source_url",
)
# Answer text a bare search word looks in: every field but the difficulty grade and the two booleans.
SEARCH_TEXT_FIELDS = tuple(f for f in FIELDS if f != "driving_difficulty" and f not in BOOLEAN_FIELDS)
FIELD_ALIASES = {
    "metaaction": "interactive_expanded_metaaction",
    "difficulty": "driving_difficulty",
    "text": SEARCH_TEXT,
}
FLAGS = {
    "pedestrians": "has_pedestrians IS TRUE",
    "traffic_light": "has_traffic_light IS TRUE",
    "night": "is_night IS TRUE",
    "interesting": "is_interesting IS TRUE",
    "violation": "rule_violation_flag IS TRUE",
    "labelled": "human_label IS NOT NULL",
    "labeled": "human_label IS NOT NULL",
    "unlabelled": "human_label IS NULL",
    "unlabeled": "human_label IS NULL",
}

# Everyday words -> the catalog term they mean, so "rainy night with pedestrians" asks what a person means:
# the labels say "Light rain", not "rainy". A word written as `text~word` is looked for literally instead.
CONCEPTS = {
    **dict.fromkeys(("rain", "rainy", "raining", "rainfall", "downpour"), "weather~rain"),
    **dict.fromkeys(("snow", "snowy", "snowing", "snowfall"), "weather~snow"),
    **dict.fromkeys(("fog", "foggy", "misty", "mist", "haze", "hazy"), "weather~fog"),
    **dict.fromkeys(("cloudy", "clouds"), "weather~cloud"),
    **dict.fromkeys(("overcast", "grey", "gray"), "weather=Overcast"),
    **dict.fromkeys(("sunny", "sunlight", "sunshine"), "lighting~sunlight"),
    **dict.fromkeys(("nighttime", "dark", "darkness", "evening"), "night"),
    **dict.fromkeys(("day", "daytime", "daylight"), "lighting~daytime"),
    **dict.fromkeys(
        ("pedestrian", "people", "person", "persons", "walker", "walkers", "vru", "vrus", "crossing"), "pedestrians"
    ),
    **dict.fromkeys(("signal", "signals", "stoplight", "stoplights", "lights"), "traffic_light"),
    **dict.fromkeys(("highway", "highways", "freeway", "motorway", "expressway"), "road_type~highway"),
    **dict.fromkeys(("violations", "violating", "illegal", "infraction"), "violation"),
    **dict.fromkeys(("difficult", "hard", "dangerous", "risky"), "difficulty>=3"),
    **dict.fromkeys(("unlabeled_clips", "unannotated"), "unlabelled"),
}
# Filler words of a spoken question; dropped rather than looked for in the answer text.
STOP_WORDS = frozenset(
    "a an the with and in on at of for to by from under during while where which that this these those "
    "is are was were there some any all show me find give get clips clip scenes scene videos video footage "
    "driving drive drives car cars".split()
)

_VRU_ACTIONS = ("Yield to VRUs", "Overtake VRUs")
_VRU_WORDS = re.compile(r"\b(pedestrians?|(?:bi|motor)?cyclists?|vrus?)\b", re.IGNORECASE)
_NEGATION = re.compile(r"\b(no|not|without|none|nor|zero|absent)\b", re.IGNORECASE)
_CLAUSE_BREAK = re.compile(r"[.;!?]|\bbut\b", re.IGNORECASE)
_NO_TRAFFIC_LIGHT = ("", "n/a", "na", "none", "null")
_TERM = re.compile(r"(?P<neg>-|not:)?(?P<field>[A-Za-z_][A-Za-z0-9_]*)(?P<op>>=|<=|=|~|>|<)(?P<value>.*)", re.DOTALL)
_TRUE_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class CatalogQueryError(ValueError):
    """A search query a person wrote that cannot be understood; the message says how to fix it."""


# ----------------------------------------------------------------------------- build


def build_catalog(
    path: str | Path, clips: pd.DataFrame, splits: pd.DataFrame, captions: pd.DataFrame
) -> dict[str, int]:
    """Write the catalog as typed Parquet, atomically, and return its counts.

    Built in a temp file beside `path` and renamed over it only when complete, so a reader (the
    UI, a notebook) sees the old catalog or the new one, never half of one.
    """
    rows = catalog_rows(clips, splits, captions)
    with duckdb.connect() as conn, atomic_path(path) as tmp:
        counts = _load_table(conn, rows)
        conn.table(TABLE).write_parquet(str(tmp))
    return counts


def catalog_rows(clips: pd.DataFrame, splits: pd.DataFrame, captions: pd.DataFrame) -> pd.DataFrame:
    """One row per clip_id with every catalog column (the table's content, before typing)."""
    split_rows = _by_clip(_records(splits, ("clip_id", "sha256", "split"), "splits"))
    caption_rows = _by_clip(
        _records(captions, ("clip_id", "batch", "clip_sha256", "caption_source", "raw_text", "parsed_json"), "captions")
    )
    rows = []
    for clip, batches in latest_clips(_records(clips, ("clip_id", "batch", "sha256", "label_json"), "clips")):
        split = _pick_split(clip, split_rows.get(clip["clip_id"], []))
        mine = caption_rows.get(clip["clip_id"], [])
        picked = {source: _pick_caption(clip, source, mine) for source in CAPTION_SOURCES}
        rows.append(_catalog_row(clip, batches, split, picked))
    return pd.DataFrame(rows, columns=[*COLUMNS, _SEARCH_TEXT], dtype=object)


def _by_clip(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by clip_id, input order kept (so picking per clip is not quadratic)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["clip_id"], []).append(row)
    return grouped


def latest_clips(clips: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[str]]]:
    """(row of the latest batch by sorted name, all batches) per clip_id, ordered by clip_id."""
    by_id = _by_clip(clips)
    out = []
    for clip_id in sorted(by_id):
        group = by_id[clip_id]
        latest = max(enumerate(group), key=lambda pair: (str(pair[1]["batch"]), pair[0]))[1]
        out.append((latest, sorted({str(r["batch"]) for r in group})))
    return out


def _records(frame: pd.DataFrame | None, required: Sequence[str], name: str) -> list[dict[str, Any]]:
    """Rows as dicts of plain Python values (NaN/NA -> None); an empty frame may lack columns."""
    if frame is None or len(frame) == 0:
        return []
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}; it has {list(frame.columns)}")
    return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _plain(value: Any) -> Any:
    """Python scalars for DuckDB; pandas 3 string columns use NaN for missing."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _pick_split(clip: dict[str, Any], splits: list[dict[str, Any]]) -> str | None:
    """The split of this exact video among the clip's split rows.

    Prefer the clip's batch (when splits carry one), then a side agreeing with the label, then the last row.
    """
    labelled = clip.get("label_json") is not None
    candidates = [
        (r.get("batch") == clip["batch"], (r["split"] != "unlabelled") == labelled, i, r["split"])
        for i, r in enumerate(splits)
        if _same_or_unknown(r.get("sha256"), clip.get("sha256"))
    ]
    return max(candidates)[-1] if candidates else None


def _pick_caption(clip: dict[str, Any], source: str, captions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The clip's caption of this source from the latest batch; captions of another video (sha differs) are stale."""
    candidates = [
        (str(r.get("batch")), i, r)
        for i, r in enumerate(captions)
        if r["caption_source"] == source and _same_or_unknown(r.get("clip_sha256"), clip.get("sha256"))
    ]
    return max(candidates, key=lambda c: c[:2])[2] if candidates else None


def _same_or_unknown(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b


def _catalog_row(
    clip: dict[str, Any], batches: list[str], split: str | None, captions: dict[str, dict[str, Any] | None]
) -> dict[str, Any]:
    baseline, finetuned = captions["baseline"], captions["finetuned"]
    source, answer = best_answer(
        clip.get("label_json"), _field(finetuned, "parsed_json"), _field(baseline, "parsed_json")
    )
    flat = flatten_answer(answer)
    return {
        **{
            name: clip.get(name)
            for name in (
                "clip_id",
                "batch",
                "source_url",
                "drive_id",
                "drive_start_s",
                "drive_end_s",
                "near_duplicate_of",
                "duration_s",
                "fps",
                "width",
                "height",
                "codec",
                "size_bytes",
                "sha256",
            )
        },
        "batches": batches,
        "split": split,
        "human_label": clip.get("label_json"),
        "baseline_caption": _field(baseline, "parsed_json"),
        "finetuned_caption": _field(finetuned, "parsed_json"),
        "baseline_raw": _field(baseline, "raw_text"),
        "finetuned_raw": _field(finetuned, "raw_text"),
        "finetuned_model_hash": _field(finetuned, "model_hash"),
        "answer_source": source,
        **flat,
        **answer_flags(flat if answer is not None else None),
        _SEARCH_TEXT: search_text(flat) if answer is not None else None,
    }


def _field(row: dict[str, Any] | None, name: str) -> Any:
    return None if row is None else row.get(name)


def best_answer(
    human: str | None, finetuned: str | None, baseline: str | None
) -> tuple[str | None, dict[str, Any] | None]:
    """(source, answer) by trust: a person's label beats the fine-tuned model beats the baseline."""
    for source, text in (("human", human), ("finetuned", finetuned), ("baseline", baseline)):
        answer = _json_object(text)
        if answer is not None:
            return source, answer
    return None, None


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def flatten_answer(answer: dict[str, Any] | None) -> dict[str, Any]:
    """The 15 fields as typed column values; model answers may be partial or mistyped, so coerce leniently."""
    answer = answer or {}
    return {field: _column_value(field, answer.get(field)) for field in FIELDS}


def _column_value(field: str, value: Any) -> Any:
    if value is None:
        return None
    if field == "interactive_expanded_metaaction":
        items = value if isinstance(value, list) else [value]
        return [canonical_choice(v, METAACTIONS) or _text(v) for v in items if v is not None]
    if field == "driving_difficulty":
        return _int_or_none(value)
    if field in CATEGORICAL_FIELDS:
        return canonical_choice(value, CATEGORICAL_FIELDS[field]) or _text(value)
    if field in BOOLEAN_FIELDS:
        return canonical_boolean(value) or _text(value)
    return _text(value)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "; ".join(_text(v) for v in value)
    return json.dumps(value, ensure_ascii=False)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def answer_flags(flat: dict[str, Any] | None) -> dict[str, bool | None]:
    """Searchable yes/no facts derived from the answer; all None when there is no answer."""
    if flat is None:
        return dict.fromkeys(_FLAG_COLUMNS)
    actions = flat["interactive_expanded_metaaction"] or []
    return {
        "has_pedestrians": any(a in _VRU_ACTIONS for a in actions) or mentions_vru(flat["safety_analysis"]),
        "has_traffic_light": has_traffic_light(flat["traffic_light"]),
        "is_night": (flat["lighting"] or "").strip().lower().startswith("night"),
        "is_interesting": flat["interesting_scenario"] == "True",
        "rule_violation_flag": flat["rule_violation"] == "True",
    }


def mentions_vru(text: str | None) -> bool:
    """Whether the text names a pedestrian/cyclist/VRU that is not negated in its clause.

    Heuristic: "No pedestrians or cyclists are visible" is False, "yields to a cyclist" True.
    Only the scene description counts: a sign or rule about pedestrian crossings says nothing
    about whether anyone is there.
    """
    for clause in _CLAUSE_BREAK.split(text or ""):
        for match in _VRU_WORDS.finditer(clause):
            if not _NEGATION.search(clause[: match.start()]):
                return True
    return False


def has_traffic_light(text: str | None) -> bool:
    """True unless the text is empty, N/A-like, or starts with "No traffic light(s)"."""
    key = (text or "").strip().rstrip(".").strip().lower()
    return key not in _NO_TRAFFIC_LIGHT and not key.startswith("no traffic light")


def search_text(flat: dict[str, Any]) -> str:
    """Concatenated answer text a bare search word is looked for in."""
    parts = [_text(flat[f]) for f in SEARCH_TEXT_FIELDS if flat[f] is not None]
    return "\n".join(parts)


def _load_table(conn: duckdb.DuckDBPyConnection, rows: pd.DataFrame) -> dict[str, int]:
    """Create the typed table in an in-memory database; DuckDB casts (and rejects bad) values."""
    create_table(conn, rows, {**COLUMNS, _SEARCH_TEXT: ("VARCHAR", "text")}, ("clip_id",))
    return _counts(conn)


def create_table(
    conn: duckdb.DuckDBPyConnection,
    rows: pd.DataFrame,
    columns: dict[str, tuple[str, str]],
    primary_key: Sequence[str],
) -> None:
    """The typed `clips` table from `rows` (object columns), so `parse_query` runs on other tables too."""
    ddl = ", ".join(f"{name} {kind[0]}" for name, kind in columns.items())
    names = ", ".join(columns)
    conn.execute(f"CREATE TABLE {TABLE} ({ddl}, PRIMARY KEY ({', '.join(primary_key)}))")
    conn.register("catalog_rows", rows)
    conn.execute(f"INSERT INTO {TABLE} ({names}) SELECT {names} FROM catalog_rows")
    conn.unregister("catalog_rows")


def _counts(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    ((clips, labelled, baseline, finetuned),) = conn.execute(
        f"SELECT count(*), count(human_label), count(baseline_raw), count(finetuned_raw) FROM {TABLE}"
    ).fetchall()  # every row fetched: DuckDB 2 refuses more work on a connection with a result left open
    return {"clips": clips, "labelled": labelled, "captioned_baseline": baseline, "captioned_finetuned": finetuned}


# ----------------------------------------------------------------------------- read


def fetch_catalog(store: StateStore, scratch: str | Path) -> Path:
    """The catalog on this node for `search`: the stored file itself on a local store, else a scratch copy."""
    try:
        return store.fetch(CATALOG, scratch)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no clip catalog at {store.uri(CATALOG)}; materialize the `{ASSET_NAME}` asset to build it"
        ) from None


def _connect(path: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB whose `clips` view reads the catalog file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no clip catalog at {path}; materialize the `{ASSET_NAME}` asset to build it")
    conn = duckdb.connect()
    conn.read_parquet(str(path)).create_view(TABLE)
    return conn


def search(
    path: str | Path,
    query: str = "",
    *,
    limit: int | None = 20,
    where_sql: str | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Clips matching `query` (see `parse_query`), ordered by batch and clip_id.

    `where_sql` is a raw DuckDB WHERE fragment ANDed with the query: TRUSTED input only (it is
    pasted into the SQL as is); people's queries belong in `query`, which is parameterised.
    `limit=None` returns every match.
    """
    where, params = parse_query(query)
    if where_sql and where_sql.strip():
        where = f"({where}) AND ({where_sql})"
    selected = _checked_columns(columns or DEFAULT_SEARCH_COLUMNS)
    sql = f"SELECT {', '.join(selected)} FROM {TABLE} WHERE {where} ORDER BY batch, clip_id"
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise CatalogQueryError(f"limit must be a non-negative integer or None, got {limit!r}")
        sql += " LIMIT ?"
        params = [*params, limit]
    with _connect(path) as conn:
        return conn.execute(sql, params).df()


def _checked_columns(columns: Iterable[str]) -> list[str]:
    columns = list(columns)
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise CatalogQueryError(f"unknown columns {unknown}; valid columns: {', '.join(COLUMNS)}")
    return columns


# ----------------------------------------------------------------------------- query language


def parse_query(
    query: str | Sequence[str],
    *,
    columns: dict[str, tuple[str, str]] | None = None,
    flags: dict[str, str] | None = None,
) -> tuple[str, list[Any]]:
    """A people's filter string as (WHERE clause with ? placeholders, parameters).

    A string is split into terms at spaces (quotes group words); a sequence is the command line's
    argv, where each element is one term (see `query_terms`). Terms are ANDed:
      field=value   exact, case-insensitive (list fields: contains that element; empty value: NULL)
      field~text    substring, case-insensitive (list fields: any element contains it)
      field>n field<n field>=n field<=n (and field=n)   numeric fields
      pedestrians traffic_light night interesting violation labelled unlabelled   flags
      everyday words   rainy, foggy, dark, people, highway, ... mean catalog terms (CONCEPTS);
                       filler words (with, the, clips, ...) are dropped (STOP_WORDS)
      any other word   substring of the answer text (safety_analysis, traffic_sign, ...); text~word
                       looks for any word literally
    `-term` or `not:term` negates any term (a negated term matches where the term is not true,
    unknowns included). Field aliases: metaaction, difficulty.

    `columns`/`flags` replace the catalog's own for a table with more columns (the review page's
    scores); the language stays the same.
    """
    conditions, params = ["TRUE"], []
    columns, flags = columns or QUERY_COLUMNS, flags or FLAGS
    for token in expand_terms(query_terms(query)):
        condition, values = _term_condition(token, columns, flags)
        conditions.append(condition)
        params.extend(values)
    return " AND ".join(conditions), params


def query_terms(query: str | Sequence[str]) -> list[str]:
    """The terms of a query string, or of the command line's arguments, one term per argument.

    The shell has already removed the quotes of `weather="Light rain" night`, so its argv is
    [`weather=Light rain`, `night`]: joining and re-splitting it would break the value apart.
    An argument that still holds quotes (`'weather="Light rain" night'`, quoted whole) is read as
    a query string; one shaped `field<op>value` is one term whatever its spaces; any other
    argument with spaces ("rainy night with pedestrians", quoted whole) is a question of words.
    """
    if isinstance(query, str):
        return _tokens(query)
    terms: list[str] = []
    for part in query:
        if '"' in part or "'" in part:
            terms += _tokens(part)
        elif _TERM.fullmatch(_strip_negation(part.strip())[1]):
            terms.append(part.strip())
        else:
            terms += part.split()
    return terms


def expand_terms(terms: Sequence[str]) -> list[str]:
    """Everyday words replaced by the catalog terms they mean (CONCEPTS), filler words dropped (STOP_WORDS)."""
    out = []
    for term in terms:
        negated, body = _strip_negation(term)
        key = body.lower()
        if key in STOP_WORDS and not negated:
            continue
        if key in CONCEPTS and not _TERM.fullmatch(body):
            out.append(("-" if negated else "") + CONCEPTS[key])
        else:
            out.append(term)
    return out


def free_words(query: str | Sequence[str]) -> list[str]:
    """The query's words that are neither a field term, a flag, an everyday word nor filler: what
    only the answer text (or its meaning) can match."""
    words = []
    for term in query_terms(query):
        negated, body = _strip_negation(term)
        key = body.lower()
        if negated or _TERM.fullmatch(body) or key in FLAGS or key in CONCEPTS or key in STOP_WORDS:
            continue
        words.append(body)
    return words


def _tokens(query: str) -> list[str]:
    lexer = shlex.shlex(query or "", posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""  # '#' is a search character, not a comment
    lexer.escape = ""  # backslashes are literal
    try:
        return list(lexer)
    except ValueError as exc:
        raise CatalogQueryError(f"cannot read query {query!r}: {exc} (close every quote)") from exc


def _term_condition(token: str, columns: dict[str, tuple[str, str]], flags: dict[str, str]) -> tuple[str, list[Any]]:
    negated, body = _strip_negation(token)
    match = _TERM.fullmatch(body)
    if match:
        condition, params = _field_condition(match["field"], match["op"], match["value"], token, columns, flags)
    elif body.lower() in flags:
        condition, params = flags[body.lower()], []
    else:
        condition, params = f"contains(lower({_SEARCH_TEXT}), lower(?))", [body]
    return (f"(({condition}) IS NOT TRUE)" if negated else f"({condition})"), params


def _strip_negation(token: str) -> tuple[bool, str]:
    for prefix in ("not:", "-"):
        if token.lower().startswith(prefix) and len(token) > len(prefix):
            return True, token[len(prefix) :]
    return False, token


def _field_condition(
    name: str, op: str, value: str, token: str, columns: dict[str, tuple[str, str]], flags: dict[str, str]
) -> tuple[str, list[Any]]:
    column = FIELD_ALIASES.get(name.lower(), name.lower())
    if column not in columns:
        raise CatalogQueryError(
            f"unknown field {name!r} in {token!r}; valid fields: {', '.join(columns)}"
            f" (aliases: {', '.join(FIELD_ALIASES)}); flags: {', '.join(flags)}"
        )
    kind = columns[column][1]
    if op == "=" and value == "":
        return _null_condition(column, kind), []
    if kind == "number":
        return _number_condition(column, op, value, token)
    if op not in ("=", "~"):
        raise CatalogQueryError(f"{op!r} in {token!r} needs a numeric field; {column} is {kind}")
    if kind == "bool":
        return _bool_condition(column, op, value, token)
    if kind == "list":
        return _list_condition(column, op), [value]
    if op == "=":
        return f"lower({column}) = lower(?)", [value]
    return f"contains(lower({column}), lower(?))", [value]


def _null_condition(column: str, kind: str) -> str:
    if kind == "text":
        return f"{column} IS NULL OR {column} = ''"
    if kind == "list":
        return f"{column} IS NULL OR len({column}) = 0"
    return f"{column} IS NULL"


def _number_condition(column: str, op: str, value: str, token: str) -> tuple[str, list[Any]]:
    if op == "~":
        raise CatalogQueryError(f"'~' in {token!r} needs a text field; {column} is numeric (use =, <, >, <=, >=)")
    try:
        number = float(value)
    except ValueError:
        raise CatalogQueryError(f"{value!r} in {token!r} is not a number") from None
    if not math.isfinite(number):
        raise CatalogQueryError(f"{value!r} in {token!r} is not a finite number")
    return f"{column} {op} ?", [number]


def _bool_condition(column: str, op: str, value: str, token: str) -> tuple[str, list[Any]]:
    if op != "=" or value.lower() not in _TRUE_WORDS:
        raise CatalogQueryError(f"{token!r}: {column} is a flag; write {column}=true or {column}=false")
    return f"{column} = ?", [_TRUE_WORDS[value.lower()]]


def _list_condition(column: str, op: str) -> str:
    if op == "=":
        return f"list_contains(list_transform({column}, lambda x: lower(x)), lower(?))"
    return f"len(list_filter({column}, lambda x: contains(lower(x), lower(?)))) > 0"


# ----------------------------------------------------------------------------- preview


def catalog_markdown(path: str | Path, *, limit: int = 15) -> str:
    """A Markdown preview for Dagster UI metadata: counts, breakdowns and the first rows."""
    with _connect(path) as conn:
        counts = _counts(conn)
        breakdowns = [_breakdown(conn, column) for column in ("split", "weather", "lighting")]
        sample = conn.execute(
            f"SELECT clip_id, batch, split, answer_source, weather, lighting, road_type, driving_difficulty "
            f"FROM {TABLE} ORDER BY batch, clip_id LIMIT ?",
            [limit],
        ).fetchall()
    head = " · ".join(f"{key.replace('_', ' ')}: **{value}**" for key, value in counts.items())
    sample_header = ["clip_id", "batch", "split", "answer_source", "weather", "lighting", "road_type", "difficulty"]
    parts = [
        head,
        *breakdowns,
        f"First {len(sample)} of {counts['clips']} clips:",
        _markdown_table(sample_header, sample),
    ]
    return "\n\n".join(parts) + "\n"


def _breakdown(conn: duckdb.DuckDBPyConnection, column: str) -> str:
    rows = conn.execute(
        f"SELECT coalesce({column}, '(none)') AS value, count(*) AS n FROM {TABLE} GROUP BY 1 ORDER BY n DESC, value"
    ).fetchall()
    return _markdown_table([column, "clips"], rows)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
