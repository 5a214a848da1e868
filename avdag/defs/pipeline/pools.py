"""Concurrency pools: every step that holds GPUs (captioning, training) is in the `gpu` pool.

Each clip batch is its own partition and run, so batches run in parallel; the pool keeps the
number of GPU steps in flight at what the machine holds. Set it per deployment, e.g.
`dagster instance concurrency set gpu 1` when one captioner already uses all GPUs of the node
(see README, "Several GPUs").

With Celery (`AVDAG_EXECUTOR=celery`) the same steps carry the queue tag `GPU_STEP_TAGS`: they go to
the workers listening on the `gpu` queue (started on GPU nodes), never to the CPU workers.
"""

GPU_POOL = "gpu"
# dagster-celery reads this op tag (dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG); other executors ignore it.
GPU_STEP_TAGS = {"dagster-celery/queue": GPU_POOL}
