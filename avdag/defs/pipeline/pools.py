"""Concurrency pools: every step that holds GPUs (captioning, training) is in the `gpu` pool.

Each clip batch is its own partition and run, so batches run in parallel; the pool keeps the
number of GPU steps in flight at what the machine holds. Set it per deployment, e.g.
`dagster instance concurrency set gpu 1` when one captioner already uses all GPUs of the node
(see README, "Several GPUs").
"""

GPU_POOL = "gpu"
