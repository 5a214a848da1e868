"""Benchmark: LLM-judge throughput, the cookbook's one-call-at-a-time loop vs avdag's judge, its cache, a rate limit.

    python -m avdag_tests.bench.bench_judge              # 200 clips x 15 questions = 3,000 items; 1,200 rate-limited
    python -m avdag_tests.bench.bench_judge --quick      # 20 clips x 15 questions = 300 items; 300 rate-limited
    python -m avdag_tests.bench.bench_judge --json out.json
    python -m avdag_tests.bench.bench_judge --check      # exit 1 when a goal is missed

The judge endpoint is `OpenAIStubServer` on loopback (a real HTTP server, one thread per request, so
concurrent requests overlap) answering every chat call after a fixed latency (200 ms) with
"<answer>N</answer>". The items are synthetic JudgeItems, 15 questions per clip, every model
answer unique, so no two items share a cache key. Both loops use the real `openai` client.

(a) and (b) run `--repeats` times (default 2), alternating which goes first, each (b) on a fresh cache;
the (b)/(a) ratio is their median, with min..max printed.
(a) recipe loop, as the cookbook's `avha_judge.py` does it: one call at a time, then a 0.1 s sleep.
    Its rate does not depend on how many items there are, so it is timed on the first
    `recipe_calls` items only (100 in the full run) and reported as calls/s.
(b) avdag: `judge_items` (what `score_captions` runs: cache lookup, one `judge()` call over every
    miss, store) with `OpenAIChatJudge` at its default `max_in_flight` (64), over all items.
(c) the same with 16 in flight, a setting for a low rate limit: at 200 ms latency 16 in flight allow
    at most 80 calls/s, i.e. 24x the recipe's 3.3 calls/s; the 50x goal needs about 34 or more.
(b2) (b) again over the same items and the same cache: the goal is 0 calls, all cache hits.
(d) under a rate limit: the server enforces a requests-per-minute token bucket as OpenAI does
    (1,200 RPM, refilled continuously, one second of it saved: OpenAI's tier-1 500 RPM scaled up so
    the run takes a minute, not three), answering 429 with Retry-After and x-ratelimit-* headers.
    The judge runs at its defaults (64 in flight, no limit configured: it learns it from the
    headers). Goals: useful (non-429) calls/s >= 90% of the limit, <= 25% of requests wasted on
    429s, every item scored.

Nothing here asserts a timing; numbers are printed (and optionally written as JSON) with each
goal met or MISSED, and `--check` exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import openai

from avdag.core.common.database import sqlite_url
from avdag.core.judging.items import JudgeItem, format_judge_prompt, parse_judge_score
from avdag.core.judging.judges import DEFAULT_MAX_IN_FLIGHT, OpenAIChatJudge
from avdag.core.judging.score_captions import judge_items, spend_of
from avdag.core.judging.verdict_cache import JudgeCache
from avdag_tests.support.openai_stub_server import OpenAIStubServer, StubReply

SYSTEM_PROMPT = "You are a helpful assistant who has been tasked with evaluating the reponses."
USER_TEMPLATE = "Given the question ``%s'', human:\n%s\nLLM:\n%s\n<answer>[Single digit between 1 and 5]</answer>"
RECIPE_SLEEP_S = 0.1  # the cookbook's judge script sleeps this long after every call
QUESTIONS_PER_CLIP = 15
NARROW_IN_FLIGHT = 16
GOAL_RATIO = 50.0  # (b) vs (a) calls/s
GOAL_LIMIT_SHARE = 0.9  # (d) useful calls/s vs the rate limit
GOAL_MAX_WASTE = 0.25  # (d) share of requests answered 429


@dataclass(frozen=True)
class Sizes:
    clips: int
    recipe_calls: int
    latency_s: float = 0.2
    limited_items: int = 1200  # (d): a minute at limited_rpm
    limited_rpm: int = 1200


FULL = Sizes(clips=200, recipe_calls=100)
QUICK = Sizes(clips=20, recipe_calls=30, limited_items=300)


def synthetic_items(clips: int) -> list[JudgeItem]:
    """15 questions per clip, every answer unique to its clip."""
    return [
        JudgeItem(f"field_{q}", f"Question {q}?", f"human answer {q} for clip {c}", f"model answer {q} for clip {c}")
        for c in range(clips)
        for q in range(QUESTIONS_PER_CLIP)
    ]


def _reply(request: dict, latency_s: float) -> StubReply:
    return StubReply(
        content=f"The answers agree. <answer>{len(request['messages'][1]['content']) % 5 + 1}</answer>",
        delay_s=latency_s,
    )


def bench_recipe(server: OpenAIStubServer, items: list[JudgeItem]) -> dict:
    """(a) one call at a time, then the recipe's sleep; the client's own retries, as the recipe has them."""
    client = openai.OpenAI(api_key="sk-bench", base_url=server.base_url)
    scores = []
    started = time.perf_counter()
    for item in items:
        prompt = format_judge_prompt(USER_TEMPLATE, item.question, item.human_answer, item.model_answer)
        response = client.chat.completions.create(
            model="gpt-5", messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        )
        scores.append(parse_judge_score(response.choices[0].message.content))
        time.sleep(RECIPE_SLEEP_S)
    seconds = time.perf_counter() - started
    return {
        "loop": "recipe",
        "items": len(items),
        "calls": len(items),
        "seconds": seconds,
        "calls_per_s": len(items) / seconds,
        "scored": sum(s is not None for s in scores),
    }


def bench_avdag(
    server: OpenAIStubServer, items: list[JudgeItem], cache: JudgeCache, max_in_flight: int, loop: str
) -> dict:
    """(b)/(c)/(b2) `judge_items` over all items: cache lookup, concurrent judge calls for misses, store."""
    judge = OpenAIChatJudge(
        api_key="sk-bench",
        base_url=server.base_url,
        system_prompt=SYSTEM_PROMPT,
        user_template=USER_TEMPLATE,
        max_in_flight=max_in_flight,
    )
    requests_before = len(server.requests)
    started = time.perf_counter()
    spend = spend_of(judge_items(judge, items, cache))
    seconds = time.perf_counter() - started
    return {
        "loop": loop,
        "max_in_flight": max_in_flight,
        "items": len(items),
        "calls": spend.calls,
        "server_requests": len(server.requests) - requests_before,
        "cache_hits": spend.cache_hits,
        "failures": spend.failures,
        "scored": spend.items - spend.failures - spend.parse_failures - spend.out_of_range,
        "rate_limited_calls": spend.rate_limited_calls,
        "seconds": seconds,
        "calls_per_s": spend.calls / seconds,
    }


def bench_rate_limited(sizes: Sizes, work: Path) -> dict:
    """(d) the default judge, no limit configured, against a server enforcing `limited_rpm`, over fresh items."""
    items = [
        JudgeItem(f"field_{n % QUESTIONS_PER_CLIP}", "Question?", f"human answer {n}", f"rate-limited answer {n}")
        for n in range(sizes.limited_items)
    ]
    with OpenAIStubServer(lambda request: _reply(request, sizes.latency_s), rate_limit_rpm=sizes.limited_rpm) as server:
        cache = JudgeCache(sqlite_url(work / "limited" / "judge.sqlite"))
        row = bench_avdag(server, items, cache, DEFAULT_MAX_IN_FLIGHT, "avdag_rate_limited")
        wasted = server.rate_limited_responses
    useful_per_s = (row["server_requests"] - wasted) / row["seconds"]
    return {
        **row,
        "limit_rpm": sizes.limited_rpm,
        "server_rate_limited": wasted,
        "useful_calls_per_s": useful_per_s,
        "share_of_limit": useful_per_s / (sizes.limited_rpm / 60),
        "wasted_share": wasted / row["server_requests"] if row["server_requests"] else 0.0,
    }


def run(sizes: Sizes, work: Path, repeats: int = 2) -> dict:
    """(a) and (b) `repeats` times, alternating which goes first, each (b) on a cache of its own; then (c),
    (b2) and (d) once. The ratio's median decides the goal; its spread is reported."""
    items = synthetic_items(sizes.clips)
    pairs = []
    with OpenAIStubServer(lambda request: _reply(request, sizes.latency_s)) as server:
        for repeat in range(repeats):
            cache = JudgeCache(sqlite_url(work / f"default-{repeat}" / "judge.sqlite"))
            sides = {}
            order = ("recipe", "avdag") if repeat % 2 == 0 else ("avdag", "recipe")
            for side in order:
                if side == "recipe":
                    sides[side] = bench_recipe(server, items[: sizes.recipe_calls])
                else:
                    sides[side] = bench_avdag(server, items, cache, DEFAULT_MAX_IN_FLIGHT, "avdag_default")
            ratio = sides["avdag"]["calls_per_s"] / sides["recipe"]["calls_per_s"]
            pairs.append({"order": list(order), "ratio": ratio, "cache": cache, **sides})
        median_pair = sorted(pairs, key=lambda pair: pair["ratio"])[(len(pairs) - 1) // 2]
        recipe, default = median_pair["recipe"], median_pair["avdag"]
        narrow = bench_avdag(
            server, items, JudgeCache(sqlite_url(work / "narrow" / "judge.sqlite")), NARROW_IN_FLIGHT, "avdag_narrow"
        )
        rerun = bench_avdag(server, items, median_pair["cache"], DEFAULT_MAX_IN_FLIGHT, "avdag_rerun")
        peak = server.max_concurrent_requests
    limited = bench_rate_limited(sizes, work)
    ratios = [pair["ratio"] for pair in pairs]
    report = {
        "machine": f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip(),
        "latency_s": sizes.latency_s,
        "clips": sizes.clips,
        "items": len(items),
        "rows": [recipe, default, narrow, rerun],
        "server_peak_in_flight": peak,
        "repeats": [{"order": pair["order"], "ratio": pair["ratio"]} for pair in pairs],
        "ratio_default_vs_recipe": statistics.median(ratios),
        "ratio_spread": [min(ratios), max(ratios)],
        "ratio_narrow_vs_recipe": narrow["calls_per_s"] / recipe["calls_per_s"],
        "rate_limited": limited,
    }
    return {**report, "goals": goals(report)}


def goals(report: dict) -> dict[str, bool]:
    """Each goal the docstring states, met or not."""
    rerun, limited = report["rows"][3], report["rate_limited"]
    return {
        "default_vs_recipe_50x": report["ratio_default_vs_recipe"] >= GOAL_RATIO,
        "rerun_no_calls": rerun["calls"] == rerun["server_requests"] == 0,
        "rate_limited_90pct_of_limit": limited["share_of_limit"] >= GOAL_LIMIT_SHARE,
        "rate_limited_waste_25pct": limited["wasted_share"] <= GOAL_MAX_WASTE,
        "rate_limited_every_item_scored": limited["scored"] == limited["items"],
    }


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def format_report(report: dict) -> str:
    recipe, default, narrow, rerun = report["rows"]
    limited, met = report["rate_limited"], report["goals"]
    lines = [
        f"judge benchmark: {report['clips']} clips x {QUESTIONS_PER_CLIP} questions = {report['items']} items, "
        f"{report['latency_s'] * 1000:.0f} ms per call on loopback",
        f"(a) recipe loop (first {recipe['items']} items, +{RECIPE_SLEEP_S}s sleep): "
        f"{recipe['calls_per_s']:.2f} calls/s ({recipe['seconds']:.1f} s)",
    ]
    for label, row in (
        (f"(b) avdag, {DEFAULT_MAX_IN_FLIGHT} in flight (default)", default),
        (f"(c) avdag, {NARROW_IN_FLIGHT} in flight", narrow),
    ):
        lines.append(
            f"{label}: {row['calls']} calls in {row['seconds']:.1f} s = {row['calls_per_s']:.1f} calls/s, "
            f"{row['failures']} failures"
        )
    lines += [
        f"calls/s (b)/(a): x{report['ratio_default_vs_recipe']:.1f} median of {len(report['repeats'])} "
        f"[x{report['ratio_spread'][0]:.1f}..x{report['ratio_spread'][1]:.1f}], orders "
        + ", ".join("/".join(r["order"]) for r in report["repeats"])
        + f" (goal >= {GOAL_RATIO:g}x: {_verdict(met['default_vs_recipe_50x'])})",
        f"calls/s (c)/(a): x{report['ratio_narrow_vs_recipe']:.1f} ({NARROW_IN_FLIGHT} in flight cap it at "
        f"x{NARROW_IN_FLIGHT * (report['latency_s'] + RECIPE_SLEEP_S) / report['latency_s']:.0f})",
        f"(b2) re-run over the same items: {rerun['calls']} calls, {rerun['server_requests']} server requests, "
        f"{rerun['cache_hits']}/{rerun['items']} cache hits in {rerun['seconds']:.2f} s "
        f"(goal: 0 calls: {_verdict(met['rerun_no_calls'])})",
        f"server peak in flight: {report['server_peak_in_flight']}",
        f"(d) rate limit of {limited['limit_rpm']} RPM, {limited['items']} items, {DEFAULT_MAX_IN_FLIGHT} in flight, "
        f"limit not configured: {limited['server_requests']} requests in {limited['seconds']:.1f} s",
        f"    useful calls/s: {limited['useful_calls_per_s']:.1f} = {limited['share_of_limit']:.0%} of the limit "
        f"(goal >= {GOAL_LIMIT_SHARE:.0%}: {_verdict(met['rate_limited_90pct_of_limit'])})",
        f"    answered 429: {limited['server_rate_limited']} = {limited['wasted_share']:.1%} of requests "
        f"(goal <= {GOAL_MAX_WASTE:.0%}: {_verdict(met['rate_limited_waste_25pct'])}); "
        f"the judge counted {limited['rate_limited_calls']}",
        f"    scored: {limited['scored']}/{limited['items']} items, {limited['failures']} failures "
        f"(goal: all: {_verdict(met['rate_limited_every_item_scored'])})",
        f"machine: {report['machine']}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="20 clips (300 items), 30 recipe calls, 300 rate-limited items (< 45 s)"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--repeats", type=int, default=2, help="(a)/(b) pairs, alternating which runs first")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="avdag-bench-judge-") as work:
        report = run(QUICK if args.quick else FULL, Path(work), args.repeats)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    missed = [name for name, met in report["goals"].items() if not met]
    if args.check and missed:
        print(f"bench_judge --check: goals missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
