"""Which batches need reprocessing: captions missing, or older than what they were made from."""

from __future__ import annotations


def batches_to_reprocess(
    batches: list[str],
    clips_written: dict[str, int],
    baseline_written: dict[str, int],
    finetuned_written: dict[str, int],
    checkpoint_written: int | None,
) -> dict[str, str]:
    """batch -> why it needs a run. Arguments map batch -> latest event id (larger = newer)."""
    reasons: dict[str, str] = {}
    for batch in batches:
        if batch not in clips_written:
            reasons[batch] = "never ingested"
        elif batch not in baseline_written:
            reasons[batch] = "baseline captions missing"
        elif baseline_written[batch] < clips_written[batch]:
            reasons[batch] = "baseline captions older than the clips"
        elif batch not in finetuned_written:
            reasons[batch] = "fine-tuned captions missing"
        elif finetuned_written[batch] < clips_written[batch]:
            reasons[batch] = "fine-tuned captions older than the clips"
        elif checkpoint_written is not None and finetuned_written[batch] < checkpoint_written:
            reasons[batch] = "fine-tuned captions older than the current checkpoint"
    return reasons
