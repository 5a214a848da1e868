"""Baseline vs fine-tuned: per-question table and chart, as the recipe's sft_results figure.

The numbers come from `avdag.core.reporting.statistics`. Two means are reported. `mean_score` is the
recipe's: the mean over answers the judge scored. `mean_score_strict` also counts a question
the model did not answer (unparseable reply, missing field) as 1, the rubric's lowest grade —
otherwise a model that answers nothing would have no mean at all and could not lose — and
leaves out a failed judgement (the judge's fault, not the model's). Every mean shown says so.
Whether fine-tuning helped is read off the paired difference and its Student-t interval, not
off the two means.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

from avdag.core.reporting.statistics import INTERVAL_NAME, SOURCES, STRICT_MEAN_LABEL, question_stats

NOT_SIGNIFICANT = "n.s."


def compare_scores(baseline: pd.DataFrame, finetuned: pd.DataFrame, questions: list[str]) -> pd.DataFrame:
    """`question_stats` (no answer = 1) with the verdict per question: better, worse, or neither."""
    table = question_stats(baseline, finetuned, questions=questions, missing_as=1)
    table["finetuned_better"] = table["significant"] & (table["diff"] > 0)
    table["finetuned_worse"] = table["significant"] & (table["diff"] < 0)
    return table


@dataclass(frozen=True)
class ComparisonChart:
    """The chart as PNG bytes, and the questions it marks as not significantly different."""

    png: bytes
    not_significant: list[str]


def comparison_chart(
    table: pd.DataFrame, title: str, constant_means: pd.Series | None = None, warning: str | None = None
) -> ComparisonChart:
    """Bars of the strict mean per question (1-5) with 95% Student-t intervals as error bars.

    The recipe's mean over scored answers is a black marker; `constant_means` (by field), the
    score of always giving the commonest train answer, a red cross. A question whose paired
    difference is not significant gets a hatched fine-tuned bar and a grey "n.s." label, so
    a gap between two bars is never read as a win on its own. `warning` (a small sample) is
    printed under the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = list(table["field"])
    x = np.arange(len(fields))
    width = 0.38
    not_significant = ~table["significant"].to_numpy(dtype=bool)
    fig, ax = plt.subplots(figsize=(max(8, 0.75 * len(fields)), 4.8), dpi=110)
    colors = {"baseline": "#9aa5b1", "finetuned": "#2f7ed8"}
    for offset, source in zip((-width / 2, width / 2), SOURCES):
        xs = x + offset
        means = table[f"{source}_mean_score_strict"].to_numpy(dtype=float)
        bars = ax.bar(xs, np.nan_to_num(means), width, label=f"{source} {STRICT_MEAN_LABEL}", color=colors[source])
        if source == "finetuned":
            for bar, unmarked in zip(bars, not_significant):
                bar.set_hatch("//" if unmarked else None)
        _error_bars(ax, xs, means, table[f"{source}_strict_low"], table[f"{source}_strict_high"])
        ax.scatter(
            xs,
            table[f"{source}_mean_score"],
            marker="_",
            s=220,
            color="black",
            zorder=3,
            label="mean over scored answers" if source == "finetuned" else None,
        )
    if constant_means is not None:
        ax.scatter(
            x,
            [constant_means.get(field, np.nan) for field in fields],
            marker="x",
            s=40,
            color="#c0392b",
            zorder=5,
            label="constant answer (commonest train label)",
        )
    ax.set_xticks(x)
    labels = ax.set_xticklabels(
        [f"{field} ({NOT_SIGNIFICANT})" if flag else field for field, flag in zip(fields, not_significant)],
        rotation=40,
        ha="right",
        fontsize=8,
    )
    for label, flag in zip(labels, not_significant):
        label.set_color("grey" if flag else "black")
    ax.set_ylim(0, 6.6)  # room above 5 for the legend
    ax.set_yticks(range(6))
    ax.set_ylabel(f"judge score (1-5), {INTERVAL_NAME}")
    subtitle = f"{NOT_SIGNIFICANT} / hatched: the paired difference's 95% interval includes 0"
    ax.set_title(f"{title}\n{subtitle}" + (f"\n{warning}" if warning else ""), fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    marked = [
        label.get_text().removesuffix(f" ({NOT_SIGNIFICANT})")
        for label in ax.get_xticklabels()
        if label.get_text().endswith(f"({NOT_SIGNIFICANT})")
    ]
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return ComparisonChart(png=buffer.getvalue(), not_significant=marked)


def _error_bars(ax, xs: np.ndarray, means: np.ndarray, low: pd.Series, high: pd.Series) -> None:
    """Asymmetric error bars where an interval exists (it needs two clips)."""
    low, high = low.to_numpy(dtype=float), high.to_numpy(dtype=float)
    has_interval = ~np.isnan(low)
    ax.errorbar(
        xs[has_interval],
        means[has_interval],
        yerr=[means[has_interval] - low[has_interval], high[has_interval] - means[has_interval]],
        fmt="none",
        ecolor="black",
        elinewidth=1,
        capsize=3,
        zorder=4,
    )


def table_as_markdown(table: pd.DataFrame, sources: tuple[str, str] = SOURCES) -> str:
    """The per-question table for Dagster metadata: counts, failure rates, means, difference.

    Each mean's header says how a missing answer and a failed judgement were counted; `sources`
    names the two sides (champion and challenger in a promotion).
    """
    shown = pd.DataFrame({"field": table["field"], "n": table["n"], "paired": table["n_paired"]})
    for column, source in zip(SOURCES, sources):
        shown[f"{source} scored"] = table[f"{column}_scored_n"]
        shown[f"{source} no answer (= 1)"] = table[f"{column}_no_answer_rate"].round(2)
        shown[f"{source} judge failed (left out)"] = table[f"{column}_judge_failure_rate"].round(2)
        shown[f"{source} {STRICT_MEAN_LABEL}"] = table[f"{column}_mean_score_strict"].round(2)
    shown[f"{sources[1]} - {sources[0]} ({INTERVAL_NAME})"] = [
        format_difference(row) for row in table.to_dict("records")
    ]
    return shown.to_markdown(index=False)


def format_difference(row: dict) -> str:
    """'+0.40 [+0.10, +0.70]', with ' n.s.' when the interval includes 0 (or there is none)."""
    diff, low, high = row["diff"], row["diff_low"], row["diff_high"]
    interval = "[n/a]" if _missing(low) else f"[{low:+.2f}, {high:+.2f}]"
    text = f"{'n/a' if _missing(diff) else f'{diff:+.2f}'} {interval}"
    return text if row["significant"] else f"{text} {NOT_SIGNIFICANT}"


def _missing(value) -> bool:
    return value is None or value != value


def constant_markdown(table: pd.DataFrame) -> str:
    """Per question: the constant answer's mean beside both models', and each model minus the constant."""
    shown = pd.DataFrame({"field": table["field"]})
    if "constant_answer" in table:
        shown["constant answer"] = [_short(answer) for answer in table["constant_answer"]]
    shown[f"constant {STRICT_MEAN_LABEL}"] = table["constant_mean_score_strict"].round(2)
    for source in SOURCES:
        shown[f"{source} mean"] = table[f"{source}_mean_score_strict"].round(2)
    for source in SOURCES:
        shown[f"{source} - constant ({INTERVAL_NAME})"] = [
            format_difference(
                {
                    "diff": row[f"{source}_diff"],
                    "diff_low": row[f"{source}_diff_low"],
                    "diff_high": row[f"{source}_diff_high"],
                    "significant": row[f"{source}_better"] or row[f"{source}_worse"],
                }
            )
            for row in table.to_dict("records")
        ]
    return shown.to_markdown(index=False)


def _short(answer: str | None, limit: int = 40) -> str:
    if not isinstance(answer, str):  # no constant for the field (None, NaN in a frame)
        return "n/a"
    return answer if len(answer) <= limit else answer[: limit - 3] + "..."


def multiple_choice_markdown(table: pd.DataFrame) -> str:
    """Exact accuracy per closed-answer field beside always giving the majority answer."""
    shown = table[["field", "n", "baseline_accuracy", "finetuned_accuracy", "majority_accuracy", "majority_answer"]]
    return shown.round(2).to_markdown(index=False)


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
