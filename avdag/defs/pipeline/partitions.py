"""One dynamic partition per uploaded clip batch (a batch folder in the landing zone).

Per batch, not per clip: the Dagster UI stays fast with many partitions only up to ~100K.
"""

import dagster as dg

clip_batches = dg.DynamicPartitionsDefinition(name="clip_batches")

# Cheap per-batch assets follow new clips automatically (when Dagster's automation sensor is on);
# training and the fine-tuned chain stay on the job, sensor and schedule.
FOLLOW_NEW_CLIPS = dg.AutomationCondition.eager()
