"""One dynamic partition per uploaded clip batch (a batch folder in the landing zone).

Per batch, not per clip: the Dagster UI stays fast with many partitions only up to ~100K.
"""

import dagster as dg

clip_batches = dg.DynamicPartitionsDefinition(name="clip_batches")
