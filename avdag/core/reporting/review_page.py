"""The review page: one self-contained HTML file (thumbnails as data URIs, no CDN, no server).

It is stored in the state store and opened from there or written by `avdag review`, so it must
work from a file:// URL on a machine with no network: the rows travel inside the page as JSON and
a small script filters, sorts and exports them. Its filter box speaks the catalog's query language
(`weather="Light rain" night -interesting`, plus worse, disagree, parse_failed, min_score<3), the
same terms `filter_rows` evaluates in Python; the exports are the stored JSON and CSV, restricted
to the clips on screen.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from avdag.core.reporting import catalog
from avdag.core.reporting.review import CSV_COLUMNS, FLAG_COLUMNS, QUERY_COLUMNS, csv_cell, csv_records


def review_page(
    rows: Sequence[dict[str, Any]],
    title: str,
    *,
    subtitle: str = "",
    query: str = "",
    concepts: Mapping[str, str] | None = None,
    stop_words: Sequence[str] | None = None,
) -> str:
    """The HTML text of the page for `rows` (review_rows' output, frames included)."""
    data = {
        "title": title,
        "rows": [{**row, "csv": [[csv_cell(r[c]) for c in CSV_COLUMNS] for r in csv_records([row])]} for row in rows],
        "columns": {name: kind for name, (_, kind) in QUERY_COLUMNS.items()},
        "aliases": catalog.FIELD_ALIASES,
        "flags": {name: list(rule) for name, rule in FLAG_COLUMNS.items()},
        "concepts": dict(catalog.CONCEPTS if concepts is None else concepts),
        "stop_words": sorted(catalog.STOP_WORDS if stop_words is None else stop_words),
        "csv_columns": list(CSV_COLUMNS),
        "query": query,
    }
    payload = json.dumps(data, ensure_ascii=False, default=str).replace("<", "\\u003c")
    return (
        _TEMPLATE.replace("__TITLE__", html.escape(title))
        .replace("__SUBTITLE__", html.escape(subtitle))
        .replace("__QUERY__", html.escape(query, quote=True))
        .replace("__DATA__", payload)
    )


_TEMPLATE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 3em; color: #222; }
header { position: sticky; top: 0; background: #fff; padding: .6em 0; border-bottom: 1px solid #ccc; z-index: 1; }
h1 { font-size: 1.3em; margin: .2em 0; }
#query { width: 40em; font: inherit; padding: .2em .4em; }
#query-error { color: #b00; margin-left: 1em; }
.controls label { margin-right: 1em; }
.clip { border: 1px solid #ccc; border-radius: 6px; margin: 1em 0; padding: .6em 1em; }
.clip h2 { font-size: 1.05em; margin: 0 0 .4em; }
.badge { display: inline-block; padding: 0 .5em; margin-left: .4em; border-radius: 9px; background: #eee;
  font-size: .85em; font-weight: normal; }
.badge.bad { background: #fdd; }
.frames img { margin-right: 4px; border: 1px solid #999; }
table { border-collapse: collapse; width: 100%; margin-top: .4em; }
td, th { border-top: 1px solid #e4e4e4; padding: .2em .4em; vertical-align: top; text-align: left; }
td.score { text-align: center; width: 3em; font-weight: bold; }
tr.worse td { background: #fff0f0; }
tr.disagree td.answer { font-style: italic; }
.status { color: #b00; font-size: .85em; }
details { font-size: .85em; color: #555; }
</style>
</head>
<body>
<header>
<h1>__TITLE__</h1>
<div>__SUBTITLE__</div>
<div class="controls">
<input id="query" value="__QUERY__" placeholder='filter: weather="Light rain" night worse min_score<3 -interesting'
  aria-label="filter">
<span id="query-error"></span><br>
<label><input type="checkbox" id="only-worse"> fine-tuned worse</label>
<label><input type="checkbox" id="only-disagree"> baseline/fine-tuned disagree</label>
<label><input type="checkbox" id="only-parse-failed"> parse failures</label>
<label>order <select id="sort"><option value="worst">lowest score first</option>
<option value="worse">most fields worse</option><option value="clip">batch, clip</option></select></label>
<button id="export-json">export JSON</button> <button id="export-csv">export CSV</button>
<span id="count"></span>
</div>
</header>
<main id="clips"></main>
<script type="application/json" id="review-data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("review-data").textContent);
const TERM = /^([A-Za-z_][A-Za-z0-9_]*)(>=|<=|=|~|>|<)([\s\S]*)$/;
const TRUE_WORDS = {"true": true, "yes": true, "1": true, "false": false, "no": false, "0": false};

function tokens(query) {
  // Whitespace separates terms, quotes group words and are removed (as the shell and avdag search read them).
  const out = []; let cur = null; let quote = null;
  for (const ch of query) {
    if (quote) { if (ch === quote) quote = null; else cur += ch; continue; }
    if (ch === '"' || ch === "'") { quote = ch; if (cur === null) cur = ""; continue; }
    if (/\s/.test(ch)) { if (cur !== null) { out.push(cur); cur = null; } continue; }
    cur = (cur === null ? "" : cur) + ch;
  }
  if (quote) throw new Error("close every quote");
  if (cur !== null) out.push(cur);
  return out;
}

function expand(terms) {
  // Everyday words (rainy, dark, people) become the catalog terms they mean; filler words are dropped.
  const out = [];
  for (const term of terms) {
    const [negated, body] = stripNegation(term);
    const key = body.toLowerCase();
    if (DATA.stop_words.includes(key) && !negated) continue;
    if (Object.prototype.hasOwnProperty.call(DATA.concepts, key) && !TERM.test(body))
      out.push((negated ? "-" : "") + DATA.concepts[key]);
    else out.push(term);
  }
  return out;
}

function stripNegation(term) {
  for (const prefix of ["not:", "-"]) {
    if (term.toLowerCase().startsWith(prefix) && term.length > prefix.length) return [true, term.slice(prefix.length)];
  }
  return [false, term];
}

function lower(v) { return String(v).toLowerCase(); }

function fieldTest(name, op, value, term) {
  const column = DATA.aliases[name.toLowerCase()] || name.toLowerCase();
  const kind = DATA.columns[column];
  if (!kind) throw new Error("unknown field " + JSON.stringify(name) + " in " + JSON.stringify(term));
  if (op === "=" && value === "") {
    return row => { const v = row.catalog[column];
      return v === null || v === undefined || (kind === "text" && v === "") || (kind === "list" && v.length === 0); };
  }
  if (kind === "number") {
    const n = Number(value);
    if (op === "~" || value.trim() === "" || !isFinite(n)) throw new Error(JSON.stringify(term) + " needs a number");
    const cmp = {"=": (a, b) => a === b, ">": (a, b) => a > b, "<": (a, b) => a < b, ">=": (a, b) => a >= b,
                 "<=": (a, b) => a <= b}[op];
    return row => { const v = row.catalog[column]; return v === null || v === undefined ? null : cmp(Number(v), n); };
  }
  if (op !== "=" && op !== "~") throw new Error(op + " in " + JSON.stringify(term) + " needs a numeric field");
  if (kind === "bool") {
    if (op !== "=" || !(value.toLowerCase() in TRUE_WORDS))
      throw new Error(column + " is a flag: write =true or =false");
    const wanted = TRUE_WORDS[value.toLowerCase()];
    return row => { const v = row.catalog[column]; return v === null || v === undefined ? null : v === wanted; };
  }
  const needle = value.toLowerCase();
  if (kind === "list") {
    return row => { const v = row.catalog[column]; if (v === null || v === undefined) return null;
      return v.some(x => op === "=" ? lower(x) === needle : lower(x).includes(needle)); };
  }
  return row => { const v = row.catalog[column]; if (v === null || v === undefined) return null;
    return op === "=" ? lower(v) === needle : lower(v).includes(needle); };
}

function flagTest(rule) {
  const [column, wanted] = rule;
  return row => { const v = row.catalog[column];
    if (wanted === "positive") return v !== null && v !== undefined && v > 0;
    if (wanted === "present") return v !== null && v !== undefined;
    return v === wanted; };
}

function compile(query) {
  const tests = [];
  for (const term of expand(tokens(query))) {
    const [negated, body] = stripNegation(term);
    const m = TERM.exec(body);
    let test;
    if (m) test = fieldTest(m[1], m[2], m[3], term);
    else if (Object.prototype.hasOwnProperty.call(DATA.flags, body.toLowerCase()))
      test = flagTest(DATA.flags[body.toLowerCase()]);
    else {
      const needle = body.toLowerCase();
      test = row => { const v = row.catalog.search_text;
        return v === null || v === undefined ? null : lower(v).includes(needle); };
    }
    tests.push(negated ? row => test(row) !== true : row => test(row) === true);
  }
  return row => tests.every(t => t(row));
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) node.append(child === null || child === undefined ? "" : child);
  return node;
}

function answerText(v) {
  if (v === null || v === undefined) return "";
  return typeof v === "string" ? v : JSON.stringify(v);
}

function fmt(v) { return v === null || v === undefined ? "-" : Number(v).toFixed(2).replace(/\.00$/, ""); }

function answerCell(f, source) {
  const cell = el("td", {"class": "answer " + source}, answerText(f[source]));
  const status = f[source + "_status"];
  if (status !== "ok") cell.append(el("div", {"class": "status"}, status));
  return cell;
}

function scoreCell(f, source) {
  const score = f[source + "_score"], strict = f[source + "_strict_score"];
  const shown = score !== null ? fmt(score) : strict !== null ? "(" + fmt(strict) + ")" : "";
  const cell = el("td", {"class": "score " + source + "-score"}, shown);
  const reply = f[source + "_reply"];
  if (reply) { cell.title = reply; cell.append(el("details", {}, el("summary", {}, "judge"), reply)); }
  return cell;
}

function card(row) {
  const title = el("h2", {}, row.clip_id, el("small", {}, " " + row.batch + " \u00b7 " + (row.split || "?")));
  title.append(el("span", {"class": "badge" + (row.min_score !== null && row.min_score <= 2 ? " bad" : "")},
                  "lowest score " + fmt(row.min_score)));
  if (row.fields_worse)
    title.append(el("span", {"class": "badge bad"},
                    row.fields_worse + (row.fields_worse === 1 ? " field" : " fields") + " worse"));
  if (row.fields_disagree) title.append(el("span", {"class": "badge"}, row.fields_disagree + " disagree"));
  for (const source of ["baseline", "finetuned"]) {
    const s = row.sources[source];
    if (s.parse_failed) title.append(el("span", {"class": "badge bad"}, source + " parse failed"));
    for (const q of s.quality) title.append(el("span", {"class": "badge bad"}, source + " " + q));
  }
  if (!row.human_label) title.append(el("span", {"class": "badge"}, "unlabelled"));
  const frames = el("div", {"class": "frames"});
  row.frames.forEach((src, i) =>
    frames.append(el("img", {"class": "frame", "src": src, "alt": row.clip_id + " frame " + (i + 1)})));
  if (!row.frames.length) frames.append("(no frames)");
  const table = el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "human label"),
    el("th", {}, "baseline"), el("th", {}, "score"), el("th", {}, "fine-tuned"), el("th", {}, "score"))));
  const body = el("tbody");
  for (const f of row.fields) {
    const cls = (f.worse ? "worse " : "") + (f.disagree ? "disagree" : "");
    body.append(el("tr", {"class": cls.trim(), "data-field": f.field}, el("td", {"title": f.question || ""}, f.field),
      el("td", {"class": "human"}, answerText(f.human)), answerCell(f, "baseline"), scoreCell(f, "baseline"),
      answerCell(f, "finetuned"), scoreCell(f, "finetuned")));
  }
  table.append(body);
  return el("section", {"class": "clip", "data-clip-id": row.clip_id, "data-batch": row.batch}, title, frames, table);
}

const ORDERS = {
  worst: (a, b) => (a.min_score === null) - (b.min_score === null) || (a.min_score || 0) - (b.min_score || 0)
    || b.fields_worse - a.fields_worse || (a.finetuned_mean || 0) - (b.finetuned_mean || 0) || byKey(a, b),
  worse: (a, b) => b.fields_worse - a.fields_worse || byKey(a, b),
  clip: (a, b) => byKey(a, b),
};
function cmp(a, b) { return a < b ? -1 : a > b ? 1 : 0; }  // code points, as Python sorts
function byKey(a, b) { return cmp(a.batch, b.batch) || cmp(a.clip_id, b.clip_id); }

let visible = [];
function update() {
  const error = document.getElementById("query-error");
  let match;
  try { match = compile(document.getElementById("query").value); error.textContent = ""; }
  catch (e) { error.textContent = e.message; return; }
  const worse = document.getElementById("only-worse").checked;
  const disagree = document.getElementById("only-disagree").checked;
  const parse = document.getElementById("only-parse-failed").checked;
  visible = DATA.rows.filter(r => match(r) && (!worse || r.fields_worse > 0) && (!disagree || r.fields_disagree > 0)
    && (!parse || r.parse_failed));
  visible.sort(ORDERS[document.getElementById("sort").value]);
  const main = document.getElementById("clips");
  main.replaceChildren(...visible.map(card));
  document.getElementById("count").textContent = visible.length + " of " + DATA.rows.length + " clips";
}

function download(name, type, text) {
  const link = el("a", {"href": URL.createObjectURL(new Blob([text], {type})), "download": name});
  document.body.append(link); link.click(); link.remove();
}
function csvCell(v) { return /[",\r\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
function exported() { return visible.slice().sort(ORDERS.clip); }  // the stored files' order, whatever the screen's
function exportCsv() {
  const lines = [DATA.csv_columns.join(",")];
  for (const row of exported()) for (const record of row.csv) lines.push(record.map(csvCell).join(","));
  download("review.csv", "text/csv", lines.join("\n") + "\n");
}
function exportJson() {
  const rows = exported().map(r => { const o = Object.assign({}, r); delete o.frames; delete o.csv; return o; });
  download("review.json", "application/json", JSON.stringify({title: DATA.title, clips: rows.length, rows}, null, 1));
}

for (const id of ["query"]) document.getElementById(id).addEventListener("input", update);
for (const id of ["only-worse", "only-disagree", "only-parse-failed", "sort"])
  document.getElementById(id).addEventListener("change", update);
document.getElementById("export-csv").addEventListener("click", exportCsv);
document.getElementById("export-json").addEventListener("click", exportJson);
update();
</script>
</body>
</html>
"""
