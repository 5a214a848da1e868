"""Concurrency pools: every step that holds GPUs (captioning, training) is in the `gpu` pool.

Each clip batch is its own partition and run, so batches run in parallel; the pool keeps the
number of GPU steps in flight at what the machine holds. Set it per deployment, e.g.
`dagster instance concurrency set gpu 1` when one captioner already uses all GPUs of the node
(see README, "Several GPUs").

With Celery (`AVDAG_EXECUTOR=celery`) the same steps carry a queue tag, so only GPU workers take them:
captioning goes to the `gpu` queue (`GPU_STEP_TAGS`), training to the `training` queue
(`TRAINING_STEP_TAGS`), because training wants the node with the most GPUs while captioning scales out
on small ones. A worker may listen on both (`-q gpu,training`: one comma-separated value).
"""

GPU_POOL = "gpu"
TRAINING_QUEUE = "training"
# dagster-celery reads this op tag (dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG); other executors ignore it.
GPU_STEP_TAGS = {"dagster-celery/queue": GPU_POOL}
TRAINING_STEP_TAGS = {"dagster-celery/queue": TRAINING_QUEUE}
