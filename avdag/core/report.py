"""Baseline vs fine-tuned: per-question table and bar chart, as the recipe's sft_results figure.

Two means are reported. `mean_score` is the recipe's: the mean over answers the judge scored.
`mean_score_strict` also counts a question the model did not answer (unparseable reply, missing
field, failed judge call) as 1, the rubric's lowest grade — otherwise a model that answers
nothing would have no mean at all and could not lose.
"""

from __future__ import annotations

import io
import math
from typing import Any

import pandas as pd

from avdag.core.scoring import summarize_scores

SOURCES = ("baseline", "finetuned")


def strict_mean(scores: pd.Series) -> float:
    values = pd.to_numeric(scores, errors="coerce").fillna(1.0)
    return float(values.mean()) if len(values) else math.nan


def compare_scores(baseline: pd.DataFrame, finetuned: pd.DataFrame, questions: list[str]) -> pd.DataFrame:
    """One row per question: the recipe's summary for both sources and the strict means."""
    table = pd.DataFrame({"field": questions})
    for source, rows in zip(SOURCES, (baseline, finetuned)):
        summary = summarize_scores(rows).set_index("field").reindex(questions)
        for column in ("num_results", "num_scores", "mean_score", "success_rate"):
            table[f"{source}_{column}"] = summary[column].to_numpy()
        strict = rows.groupby("field")["score"].apply(strict_mean) if len(rows) else pd.Series(dtype=float)
        table[f"{source}_mean_score_strict"] = strict.reindex(questions).to_numpy()
    table["finetuned_better"] = table["finetuned_mean_score_strict"] > table["baseline_mean_score_strict"]
    return table


def comparison_chart_png(table: pd.DataFrame, title: str) -> bytes:
    """Grouped bars of the strict mean per question (1-5), with the recipe mean as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = list(table["field"])
    x = range(len(fields))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(8, 0.75 * len(fields)), 4.8), dpi=110)
    colors = {"baseline": "#9aa5b1", "finetuned": "#2f7ed8"}
    for offset, source in zip((-width / 2, width / 2), SOURCES):
        xs = [i + offset for i in x]
        ax.bar(xs, table[f"{source}_mean_score_strict"].fillna(0), width, label=f"{source} (missing = 1)", color=colors[source])
        ax.scatter(xs, table[f"{source}_mean_score"], marker="_", s=220, color="black", zorder=3,
                   label="mean over scored answers" if source == "finetuned" else None)
    ax.set_xticks(list(x))
    ax.set_xticklabels(fields, rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 5.2)
    ax.set_ylabel("judge score (1-5)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def table_as_markdown(table: pd.DataFrame) -> str:
    columns = ["field", "baseline_mean_score_strict", "finetuned_mean_score_strict", "baseline_mean_score",
               "finetuned_mean_score", "baseline_success_rate", "finetuned_success_rate", "finetuned_num_results"]
    return table[columns].round(2).to_markdown(index=False)


def multiple_choice_accuracy(rows: pd.DataFrame, field: str) -> dict[str, Any]:
    """Exact accuracy on a closed-answer field next to always answering the eval set's majority label.

    Tells whether the video reaches the model: a model that ignores the picture cannot beat
    the majority rate for long.
    """
    import json

    from avdag.core.labels import BOOLEAN_FIELDS, CATEGORICAL_FIELDS, canonical_boolean, canonical_choice

    def canon(value: Any) -> Any:
        if field in CATEGORICAL_FIELDS:
            return canonical_choice(value, CATEGORICAL_FIELDS[field])
        if field in BOOLEAN_FIELDS:
            return canonical_boolean(value)
        return value

    subset = rows[rows["field"] == field]
    truth = [canon(json.loads(h)) for h in subset["human_answer"]]
    predicted = [canon(json.loads(m)) if isinstance(m, str) else None for m in subset["model_answer"]]
    n = len(truth)
    if n == 0:
        return {"field": field, "n": 0, "accuracy": math.nan, "majority_class": None, "majority_rate": math.nan}
    majority = max(set(map(str, truth)), key=[str(t) for t in truth].count)
    return {
        "field": field,
        "n": n,
        "accuracy": sum(p is not None and p == t for p, t in zip(predicted, truth)) / n,
        "majority_class": majority,
        "majority_rate": [str(t) for t in truth].count(majority) / n,
    }


def loss_curve_png(losses: list[tuple[int, float]] | list[list[float]]) -> bytes:
    """Training loss per optimizer step, as the recipe shows its cosmos-rl loss curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    if losses:
        steps, values = zip(*losses)
        ax.plot(steps, values, color="#2f7ed8")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def png_markdown(png: bytes, alt: str) -> str:
    """A PNG inlined in Markdown, so Dagster's UI shows it in asset metadata."""
    import base64

    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
