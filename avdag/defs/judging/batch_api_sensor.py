"""The Batch API sensor: an ended judge submission re-runs the scoring that waits for it."""

import dagster as dg

from avdag.core.judging.batch_api_ledger import runs_to_request
from avdag.defs.pipeline.code_versions import JUDGE_ASSETS
from avdag.resources.judge import JudgeResource

# The comparison with its gate: the judge's calibration runs first and blocks it when it fails.
COMPARISON = ("judge_calibration", "score_comparison")


@dg.sensor(
    target=dg.AssetSelection.assets(*JUDGE_ASSETS, *COMPARISON),
    minimum_interval_seconds=120,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def batch_api_judge_sensor(context: dg.SensorEvaluationContext, judge: JudgeResource):
    """Polls the judge's Batch API submissions; when one ends, re-runs the scoring that waits for it.

    The comparison (behind the judge's calibration) joins the run once no submission is still
    running, so it never compares a fresh side with a stale one. Does nothing for a judge that answers live.
    """
    tracker = judge.batch_tracker()
    if tracker is None:
        return dg.SkipReason("the judge answers live: no Batch API submissions to watch")
    ended, running = tracker.poll()
    waiting = "; ".join(submission.progress() for submission in running) or "none"
    if not ended:
        return dg.SkipReason(f"{len(running)} judge batch submissions still running: {waiting}")
    context.log.info(f"{len(ended)} judge batch submissions ended; still running: {waiting}")
    compare = [] if running else list(COMPARISON)
    return [
        dg.RunRequest(
            run_key=run_key,
            partition_key=partition or None,
            asset_selection=[dg.AssetKey(name) for name in assets + compare],
        )
        for partition, (assets, run_key) in runs_to_request(ended).items()
    ]
