"""Decide, tick by tick, which landing-zone batches to (re)process.

Work per tick is bounded and independent of how much footage is already ingested: one shallow
listing of batch folder names and a marker check for each batch not seen yet. Ticks that find
nothing new spend their budget on a round-robin re-check of at most `recheck` seen batches,
one marker request each (a re-upload announces itself by re-writing its marker). A batch is
launched under its content fingerprint, taken from the batch's listing (sizes with ETags or
mtimes, or its manifest) and never from its bytes, so a tick's cost grows with files, not with
gigabytes: a re-written marker over untouched content is a no-op, a changed file is reprocessed
(locally a file re-written with the same bytes counts as changed; ingest is idempotent). The
state is plain JSON: it lives in the sensor cursor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from avdag.core.ingest.landing import LandingZone


@dataclass
class TickPlan:
    launch: list[tuple[str, str]] = field(default_factory=list)  # (batch, content fingerprint)
    new_batches: list[str] = field(default_factory=list)  # launched for the first time
    waiting: list[str] = field(default_factory=list)  # folders without a completion marker yet
    same_content_reuploads: list[str] = field(default_factory=list)
    deferred: int = 0  # ready batches left for the next tick by the cap
    state: dict = field(default_factory=dict)

    def cursor(self) -> str:
        return json.dumps(self.state, sort_keys=True)

    def summary(self) -> str:
        parts = [f"{len(self.state.get('seen', {}))} batches known"]
        if self.waiting:
            parts.append(
                f"{len(self.waiting)} waiting for a _READY or _MANIFEST.json marker ({', '.join(self.waiting[:5])})"
            )
        if self.same_content_reuploads:
            parts.append(f"{len(self.same_content_reuploads)} re-uploaded with identical content")
        if self.deferred:
            parts.append(f"{self.deferred} deferred to the next tick")
        return "; ".join(parts)


def load_state(cursor: str | None) -> dict:
    state = json.loads(cursor) if cursor else {}
    return {"seen": state.get("seen", {}), "recheck": int(state.get("recheck", 0))}


def plan_tick(zone: LandingZone, cursor: str | None, *, max_launches: int = 5, recheck: int = 20) -> TickPlan:
    state = load_state(cursor)
    seen: dict[str, dict] = state["seen"]
    plan = TickPlan(state=state)
    for batch in zone.list_batches():
        if batch in seen:
            continue
        signature = zone.marker_signature(batch)
        if signature is None:
            plan.waiting.append(batch)
        elif len(plan.launch) >= max_launches:
            plan.deferred += 1
        else:
            fingerprint = zone.batch_fingerprint(batch)
            seen[batch] = {"marker": signature, "fingerprint": fingerprint}
            plan.launch.append((batch, fingerprint))
            plan.new_batches.append(batch)
    if not plan.launch:  # new uploads first: re-checks wait for a quiet tick
        _recheck_seen(zone, plan, seen, state, max_launches, recheck)
    return plan


def _recheck_seen(zone: LandingZone, plan: TickPlan, seen: dict, state: dict, max_launches: int, recheck: int) -> None:
    """Round-robin over known batches: a re-written marker with new content means reprocess."""
    known = sorted(b for b in seen if b not in plan.new_batches)
    if not known:
        return
    start = state["recheck"] % len(known)
    window = (known[start:] + known[:start])[: min(recheck, len(known))]
    for batch in window:
        if len(plan.launch) >= max_launches:
            break
        signature = zone.marker_signature(batch, expected=seen[batch]["marker"])
        if signature is None or signature == seen[batch]["marker"]:
            continue
        fingerprint = zone.batch_fingerprint(batch)
        if fingerprint == seen[batch]["fingerprint"]:
            plan.same_content_reuploads.append(batch)
        else:
            plan.launch.append((batch, fingerprint))
        seen[batch] = {"marker": signature, "fingerprint": fingerprint}
    state["recheck"] = (start + len(window)) % max(1, len(known))
