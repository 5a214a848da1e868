"""Benchmark: upload-sensor tick cost vs ingested history and vs batches waiting, and ingest probe throughput.

    python -m avdag_tests.bench.bench_ingest            # full run (history 100 / 2,000 / 10,000 clips)
    python -m avdag_tests.bench.bench_ingest --quick    # history 10 / 200 / 500 clips, fewer probe clips
    python -m avdag_tests.bench.bench_ingest --json out.json
    python -m avdag_tests.bench.bench_ingest --check    # exit 1 when a goal is missed

Clip sizes. Local clips are sparse files of realistic size (CLIP_BYTES, 32 MiB: about 20 s of 1080p
dashcam H.264; they take no disk), so a tick that read bytes would show it. On S3 the objects are
S3_OBJECT_BYTES (64 B): moto keeps every object in memory, and an S3 listing returns size and ETag
without reading an object, so object size cannot enter an S3 tick.

Part 1, sensor tick. For each history size a fresh landing zone (a local folder, then a bucket on a
moto S3 server on loopback) receives the history as ready batches of clips (the sensor never
decodes). One `plan_tick` over the empty cursor ingests that history and gives the cursor a
long-running sensor would hold; then one new ready batch lands and `plan_tick` is timed, repeatedly,
with that same cursor, so every measured tick sees exactly one new batch. The zone's fs is wrapped in
a counting proxy (calls, entries returned, which batch each call touched) and, on S3, the botocore
client counts requests per operation. A naive sensor's cost (one recursive `find` of the whole zone)
is printed beside it. The middle history size has exactly RECHECK_PER_TICK batches, so the bounded
round-robin re-check is already at full width there: the last/middle ratio isolates pure history
growth, the last/first ratio is the one an earlier issue stated (within 20%; printed for information:
at sub-millisecond ticks the one root listing, an entry per batch, and the cursor's JSON dominate it,
so the calls per tick are what the goals hold flat).

Part 1b, batches waiting. For each count N in the batch sweep a fresh zone receives N ready batches
(`sweep_clips_per_batch` clips each) and one tick with an empty cursor and room to launch all N is
timed, so every batch is discovered and fingerprinted in that tick. Locally the largest N is timed
again with clips BYTES_FACTOR times larger (same files, same count).

Goals (`--check` exits 1 when one is MISSED):
  reads_no_clip_bytes   no measured tick opens or reads an object (only listings and marker stats;
                        the content is hashed by the ingest run, not the tick). Deterministic.
  calls_flat_in_history a new-batch tick makes the same fs calls at every history size. Deterministic.
  calls_linear_in_batches each extra waiting batch costs the same number of fs calls. Deterministic.
  tick_under_budget     the new-batch tick at the largest history stays under LOCAL_TICK_BUDGET_MS
                        locally and S3_TICK_BUDGET_MS on moto (whose LIST cost grows with the bucket).
  linear_in_batches     ms per batch at the largest N is at most LINEAR_SLACK x that at the smallest.
  flat_in_bytes         locally, BYTES_FACTOR x larger clips cost at most BYTES_SLACK x the tick time
                        (or BYTES_SLACK_MS more, whichever is looser: noise on a sub-10 ms tick).

Part 2, ingest probe. `probe_video` (container metadata + first frame + sha256) vs a naive probe that
decodes every frame to count frames and duration, over seeded synthetic clips plus the real sample.

Part 3, twin search. The near-duplicate search each new clip makes over every signature registered
before it: `SignatureIndex.nearest` vs the pair-by-pair loop over `signature_distance` it replaced,
on the same seeded 16-frame signatures, for each registry size in `twin_search_sizes`, the two
sides alternating first. Goals: the same twin and distance for every query (deterministic), and
the index at least TWIN_SEARCH_SPEEDUP x faster at the largest size (median of the queries).

Nothing here asserts a timing; numbers are printed (and optionally written as JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

from avdag.core.ingest.landing import MANIFEST_MARKER, READY_MARKER, VIDEO_SUFFIX, LandingZone  # noqa: E402
from avdag.core.ingest.upload_watch import plan_tick  # noqa: E402
from avdag.demo.sample_data import REAL_CLIP

CLIP_BYTES = 32 * 1024**2  # a local clip's size (sparse file): ~20 s of 1080p dashcam H.264
S3_OBJECT_BYTES = 64  # an S3 clip's size (moto holds objects in memory; listings never read them)
PLACEHOLDER_BYTES = S3_OBJECT_BYTES  # kept for callers of the old name
BYTES_FACTOR = 8  # the flat-in-bytes point: clips this many times larger
NEW_BATCH = "new-00000"  # sorts after every "hist-*" batch

LOCAL_TICK_BUDGET_MS = 100.0
S3_TICK_BUDGET_MS = 1000.0
LINEAR_SLACK = 2.0
BYTES_SLACK = 1.5
BYTES_SLACK_MS = 5.0
# fs methods that read an object's bytes; a tick may only read a _MANIFEST.json that way
_READ_METHODS = frozenset({"open", "cat", "cat_file", "read_bytes", "read_text", "get", "get_file", "head", "tail"})


def sensor_settings() -> tuple[int, int]:
    """(max launches, re-check width) exactly as the deployed sensor passes them to plan_tick."""
    from avdag.defs.ingest.landing_sensor import MAX_BATCHES_PER_TICK, RECHECK_PER_TICK

    return MAX_BATCHES_PER_TICK, RECHECK_PER_TICK


@dataclass(frozen=True)
class Sizes:
    history_clips: tuple[int, ...]
    clips_per_batch: int
    new_batch_clips: int
    tick_repeats: int
    naive_repeats: int
    probe_synthetic_clips: int
    probe_repeats: int
    batch_sweep: tuple[int, ...] = (1, 5, 20)
    sweep_clips_per_batch: int = 20
    clip_bytes: int = CLIP_BYTES
    twin_search_sizes: tuple[int, ...] = (1_000, 10_000)
    twin_search_queries: int = 6


TWIN_SEARCH_SPEEDUP = 5.0  # goal: the index vs the pair-by-pair loop, at the largest registry size

FULL = Sizes(
    history_clips=(100, 2_000, 10_000),
    clips_per_batch=100,
    new_batch_clips=20,
    tick_repeats=7,
    naive_repeats=3,
    probe_synthetic_clips=20,
    probe_repeats=3,
)
QUICK = Sizes(
    history_clips=(10, 200, 500),
    clips_per_batch=10,
    new_batch_clips=20,
    tick_repeats=3,
    naive_repeats=3,
    probe_synthetic_clips=4,
    probe_repeats=2,
    batch_sweep=(1, 4, 8),
    sweep_clips_per_batch=5,
    twin_search_sizes=(500, 2_000),
    twin_search_queries=4,
)


# ----------------------------------------------------------------------------------------------
# Landing-zone content
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """A clip of `size` bytes: a sparse file locally, S3_OBJECT_BYTES of `head` on S3."""

    size: int
    head: bytes


Objects = dict[str, "bytes | Clip"]


def batch_objects(batch: str, n_clips: int, rng: random.Random, clip_bytes: int = CLIP_BYTES) -> Objects:
    """Relative path -> content for one ready batch: n clips of `clip_bytes`, then its _READY marker."""
    objects: Objects = {}
    for _ in range(n_clips):
        clip_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        objects[f"{batch}/videos/{clip_id}{VIDEO_SUFFIX}"] = Clip(clip_bytes, rng.randbytes(S3_OBJECT_BYTES))
    objects[f"{batch}/{READY_MARKER}"] = b""
    return objects


def history_objects(
    history_clips: int, clips_per_batch: int, seed: int, clip_bytes: int = CLIP_BYTES
) -> tuple[Objects, list[str]]:
    """The already-ingested footage: ceil(history / per-batch) ready batches named hist-00000, ..."""
    rng = random.Random(f"{seed}:history:{history_clips}:{clips_per_batch}")
    objects: Objects = {}
    batches = []
    for index in range(math.ceil(history_clips / clips_per_batch)):
        batch = f"hist-{index:05d}"
        n = min(clips_per_batch, history_clips - index * clips_per_batch)
        objects.update(batch_objects(batch, n, rng, clip_bytes))
        batches.append(batch)
    return objects, batches


def new_batch_objects(n_clips: int, seed: int, clip_bytes: int = CLIP_BYTES) -> Objects:
    return batch_objects(NEW_BATCH, n_clips, random.Random(f"{seed}:new:{n_clips}"), clip_bytes)


# ----------------------------------------------------------------------------------------------
# Instrumentation
# ----------------------------------------------------------------------------------------------

_LISTING_METHODS = frozenset({"ls", "find", "glob", "walk", "du", "listdir", "expand_path"})


class CountingFS:
    """A thin proxy around an fsspec filesystem that counts what its caller asks of it.

    Only calls made through the proxy are counted (the real fs calling itself internally is not),
    so the counts are the LandingZone's requests. For each call it records the method, which part of
    the zone the path lies in ("root", "new" = the batch being discovered, "known" = an already
    ingested batch), whether it missed (FileNotFoundError), and how many entries a listing returned.
    """

    def __init__(self, fs, root: str, new_batch: str):
        self._fs = fs
        self._root = root.rstrip("/")
        self._new_batch = new_batch
        self.reset()

    def reset(self) -> None:
        self.calls: Counter[str] = Counter()  # "method@scope"
        self.misses = 0
        self.entries_listed = 0
        self.paths_probed = 0
        self.object_reads = 0  # calls that read an object's bytes (a _MANIFEST.json excepted)

    def _scope(self, path) -> str:
        if not isinstance(path, str):
            return "other"
        path = self._fs._strip_protocol(path).rstrip("/")
        if path == self._root:
            return "root"
        if not path.startswith(self._root + "/"):
            return "other"
        batch = path[len(self._root) + 1 :].split("/", 1)[0]
        return "new" if batch == self._new_batch else "known"

    def __getattr__(self, name):
        attr = getattr(self._fs, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def counted(*args, **kwargs):
            path = args[0] if args else kwargs.get("path")
            self.calls[f"{name}@{self._scope(path)}"] += 1
            if name in _READ_METHODS and not str(path).endswith("/" + MANIFEST_MARKER):
                self.object_reads += 1
            try:
                result = attr(*args, **kwargs)
            except FileNotFoundError:
                self.misses += 1
                self.paths_probed += 1
                raise
            if name in _LISTING_METHODS and hasattr(result, "__len__"):
                self.entries_listed += len(result)
            else:
                self.paths_probed += 1
            return result

        return counted

    def snapshot(self) -> dict:
        by_method: Counter[str] = Counter()
        by_scope: Counter[str] = Counter()
        for key, n in self.calls.items():
            method, scope = key.split("@")
            by_method[method] += n
            by_scope[scope] += n
        return {
            "fs_calls": sum(self.calls.values()),
            "fs_calls_by_method": dict(sorted(by_method.items())),
            "fs_calls_by_scope": dict(sorted(by_scope.items())),
            "fs_calls_by_method_scope": dict(sorted(self.calls.items())),
            "fs_misses": self.misses,
            "entries_listed": self.entries_listed,
            "paths_probed": self.paths_probed,
            "objects_inspected": self.entries_listed + self.paths_probed,
            "object_reads": self.object_reads,
        }


class S3RequestCounter:
    """Counts S3 API calls (one per operation issued by s3fs's botocore client)."""

    def __init__(self, client):
        self.ops: Counter[str] = Counter()
        client.meta.events.register("before-call.s3", self._on_call)

    def _on_call(self, event_name: str = "", **_kwargs) -> None:
        self.ops[event_name.rsplit(".", 1)[-1]] += 1

    def reset(self) -> None:
        self.ops.clear()

    def snapshot(self) -> dict:
        return {"s3_requests": sum(self.ops.values()), "s3_requests_by_op": dict(sorted(self.ops.items()))}


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------


class LocalBackend:
    name = "local"

    def __init__(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="avdag-bench-local-")
        self.base = Path(self._tmp.name)

    def new_root(self, label: str) -> str:
        return str(self.base / label / "landing")

    def write(self, url: str, objects: Objects) -> None:
        root = Path(url)
        for rel, data in objects.items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, Clip):  # its first bytes, then a hole up to the clip's size: no disk used
                with open(target, "wb") as handle:
                    handle.write(data.head)
                    os.truncate(handle.fileno(), data.size)
            else:
                target.write_bytes(data)

    def zone(self, url: str) -> tuple[LandingZone, S3RequestCounter | None]:
        return LandingZone(url), None

    def list_baseline_ms(self, url: str, repeats: int) -> float | None:
        return None

    def close(self) -> None:
        self._tmp.cleanup()


_DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "benchmark",
    "AWS_SECRET_ACCESS_KEY": "benchmark",
    "AWS_SESSION_TOKEN": "benchmark",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_CLEARED_AWS_ENV = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@contextmanager
def dummy_aws_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in (*_DUMMY_AWS_ENV, *_CLEARED_AWS_ENV)}
    os.environ.update(_DUMMY_AWS_ENV)
    for key in _CLEARED_AWS_ENV:
        os.environ.pop(key, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class S3Backend:
    """A moto S3 server on 127.0.0.1; one bucket per history size (moto scans a whole bucket per LIST).

    moto keeps its state per process, shared by every server started in it, so bucket names carry a
    per-instance token and the buckets are deleted on close.
    """

    name = "s3"

    def __init__(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._env = dummy_aws_env()
        self._env.__enter__()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self._admin = self._fs()
        self._token = uuid.uuid4().hex[:8]
        self._buckets: list[str] = []

    def _storage_options(self) -> dict:
        return {
            "client_kwargs": {"endpoint_url": self.endpoint},
            "skip_instance_cache": True,
            "use_listings_cache": False,
        }

    def _fs(self):
        import s3fs

        return s3fs.S3FileSystem(**self._storage_options())

    def new_root(self, label: str) -> str:
        bucket = f"avdag-bench-{self._token}-{label}".lower().replace("_", "-")
        self._admin.mkdir(bucket)
        self._buckets.append(bucket)
        return f"s3://{bucket}/landing"

    def write(self, url: str, objects: Objects) -> None:
        base = url.split("://", 1)[1]
        self._admin.pipe(
            {f"{base}/{rel}": data.head if isinstance(data, Clip) else data for rel, data in objects.items()}
        )

    def zone(self, url: str) -> tuple[LandingZone, S3RequestCounter]:
        from fsspec.asyn import sync

        zone = LandingZone(url, self._storage_options())
        client = sync(zone.fs.loop, zone.fs.set_session)
        return zone, S3RequestCounter(client)

    def list_baseline_ms(self, url: str, repeats: int) -> float:
        """One LIST of an empty prefix in this bucket: moto's per-request cost, which grows with
        the bucket's object count (real S3's does not); read S3 timings against it."""
        fs = self._fs()
        probe = url.split("://", 1)[1] + "/no-such-batch-for-baseline/"
        fs.ls(url.split("://", 1)[1])  # warm the connection
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fs.exists(probe)  # HEAD (404) + one LIST with MaxKeys=1
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000 / 2

    def close(self) -> None:
        try:
            for bucket in self._buckets:
                self._admin.rm(bucket, recursive=True)
        finally:
            try:
                self._server.stop()
            finally:
                self._env.__exit__(None, None, None)


# ----------------------------------------------------------------------------------------------
# Part 1: sensor tick
# ----------------------------------------------------------------------------------------------


def _median_ms(times: Sequence[float]) -> float:
    return statistics.median(times) * 1000


def measure_history(
    backend,
    history_clips: int,
    *,
    clips_per_batch: int,
    new_batch_clips: int,
    repeats: int,
    max_launches: int,
    recheck: int,
    naive_repeats: int = 3,
    seed: int = 0,
    clip_bytes: int = CLIP_BYTES,
) -> dict:
    """Cost of one tick that discovers one new batch, given `history_clips` already ingested."""
    url = backend.new_root(f"h{history_clips}")
    objects, history_batches = history_objects(history_clips, clips_per_batch, seed, clip_bytes)
    start = time.perf_counter()
    backend.write(url, objects)
    setup_s = time.perf_counter() - start

    zone, requests = backend.zone(url)
    # The cursor a sensor holds once all history has been ingested (one unlimited tick = the same state
    # as many capped ticks), then a sanity tick: nothing new.
    ingest = plan_tick(zone, None, max_launches=len(history_batches) + 1, recheck=recheck)
    assert [b for b, _ in ingest.launch] == history_batches, "history was not ingested as expected"
    cursor = ingest.cursor()
    idle = plan_tick(zone, cursor, max_launches=max_launches, recheck=recheck)
    assert not idle.launch, f"an idle tick launched {idle.launch}"

    start = time.perf_counter()
    backend.write(url, new_batch_objects(new_batch_clips, seed, clip_bytes))
    setup_s += time.perf_counter() - start

    raw_fs = zone.fs
    counting = CountingFS(raw_fs, zone.root, NEW_BATCH)
    zone.fs = counting

    def tick():
        counting.reset()
        if requests:
            requests.reset()
        begin = time.perf_counter()
        plan = plan_tick(zone, cursor, max_launches=max_launches, recheck=recheck)
        elapsed = time.perf_counter() - begin
        launched = [b for b, _ in plan.launch]
        assert launched == [NEW_BATCH], f"expected exactly the new batch, launched {launched}"
        counts = counting.snapshot()
        if requests:
            counts.update(requests.snapshot())
        return elapsed, counts

    tick()  # warm-up (connections, imports)
    times, snapshots = [], []
    for _ in range(repeats):
        elapsed, counts = tick()
        times.append(elapsed)
        snapshots.append(counts)

    zone.fs = raw_fs
    naive_times, naive_entries = [], set()
    raw_fs.find(zone.root)  # warm-up
    for _ in range(naive_repeats):
        begin = time.perf_counter()
        found = raw_fs.find(zone.root)
        naive_times.append(time.perf_counter() - begin)
        naive_entries.add(len(found))

    row = {
        "history_clips": history_clips,
        "history_batches": len(history_batches),
        "new_batch_clips": new_batch_clips,
        "clip_bytes": clip_bytes if backend.name == "local" else S3_OBJECT_BYTES,
        "objects_in_zone": len(objects) + new_batch_clips + 1,
        "tick_ms_median": _median_ms(times),
        "tick_ms_all": [t * 1000 for t in times],
        "counts_stable": all(s == snapshots[0] for s in snapshots),
        **snapshots[0],
        "recheck_window": min(recheck, len(history_batches)),
        "cursor_bytes": len(cursor.encode()),
        "naive_ms_median": _median_ms(naive_times),
        "naive_repeats": naive_repeats,
        "naive_entries": naive_entries.pop() if len(naive_entries) == 1 else sorted(naive_entries),
        "setup_s": setup_s,
    }
    baseline = backend.list_baseline_ms(url, repeats)
    if baseline is not None:
        row["backend_list_baseline_ms"] = baseline
    return row


def bench_sensor(
    backend,
    history_sizes: Sequence[int],
    *,
    clips_per_batch: int,
    new_batch_clips: int,
    repeats: int,
    naive_repeats: int = 3,
    max_launches: int | None = None,
    recheck: int | None = None,
    seed: int = 0,
    clip_bytes: int = CLIP_BYTES,
) -> dict:
    default_launches, default_recheck = sensor_settings()
    max_launches = default_launches if max_launches is None else max_launches
    recheck = default_recheck if recheck is None else recheck
    rows = [
        measure_history(
            backend,
            h,
            clips_per_batch=clips_per_batch,
            new_batch_clips=new_batch_clips,
            repeats=repeats,
            naive_repeats=naive_repeats,
            max_launches=max_launches,
            recheck=recheck,
            seed=seed,
            clip_bytes=clip_bytes,
        )
        for h in history_sizes
    ]
    return {
        "backend": backend.name,
        "max_launches": max_launches,
        "recheck": recheck,
        "clips_per_batch": clips_per_batch,
        "rows": rows,
    }


def measure_batches(
    backend, n_batches: int, *, clips_per_batch: int, clip_bytes: int, repeats: int, seed: int = 0
) -> dict:
    """One tick over `n_batches` ready batches nobody has seen, with room to launch them all."""
    url = backend.new_root(f"b{n_batches}-{clip_bytes}")
    rng = random.Random(f"{seed}:sweep:{n_batches}")
    objects: Objects = {}
    for index in range(n_batches):
        objects.update(batch_objects(f"wait-{index:05d}", clips_per_batch, rng, clip_bytes))
    backend.write(url, objects)
    zone, requests = backend.zone(url)
    counting = CountingFS(zone.fs, zone.root, "")
    zone.fs = counting
    times, snapshots = [], []
    for attempt in range(repeats + 1):  # the first is a warm-up
        counting.reset()
        begin = time.perf_counter()
        plan = plan_tick(zone, None, max_launches=n_batches, recheck=0)
        elapsed = time.perf_counter() - begin
        assert len(plan.launch) == n_batches, f"launched {len(plan.launch)} of {n_batches} batches"
        if attempt:
            times.append(elapsed)
            snapshots.append(counting.snapshot())
    tick_ms = _median_ms(times)
    return {
        "batches": n_batches,
        "clips_per_batch": clips_per_batch,
        "clip_bytes": clip_bytes if backend.name == "local" else S3_OBJECT_BYTES,
        "bytes_in_zone": n_batches * clips_per_batch * (clip_bytes if backend.name == "local" else S3_OBJECT_BYTES),
        "tick_ms_median": tick_ms,
        "ms_per_batch": tick_ms / n_batches,
        "counts_stable": all(s == snapshots[0] for s in snapshots),
        "fs_calls": snapshots[0]["fs_calls"],
        "object_reads": snapshots[0]["object_reads"],
    }


def bench_batches(
    backend, sweep: Sequence[int], *, clips_per_batch: int, clip_bytes: int, repeats: int, seed: int = 0
) -> dict:
    """The batch sweep, plus (locally) its largest point again with BYTES_FACTOR x larger clips."""
    rows = [
        measure_batches(backend, n, clips_per_batch=clips_per_batch, clip_bytes=clip_bytes, repeats=repeats, seed=seed)
        for n in sweep
    ]
    report = {"backend": backend.name, "rows": rows}
    if backend.name == "local":
        report["larger_clips"] = measure_batches(
            backend,
            sweep[-1],
            clips_per_batch=clips_per_batch,
            clip_bytes=clip_bytes * BYTES_FACTOR,
            repeats=repeats,
            seed=seed,
        )
    return report


# ----------------------------------------------------------------------------------------------
# Part 2: ingest probe
# ----------------------------------------------------------------------------------------------


def naive_full_decode_probe(path: str | os.PathLike[str]) -> dict:
    """What a probe costs without avdag's shortcut: decode every frame to count frames and duration."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames, width, height = 0, 0, 0
        for frame in container.decode(stream):
            frames += 1
            width, height = frame.width, frame.height
        fps = float(stream.average_rate or stream.guessed_rate)
    return {"num_frames": frames, "duration_s": frames / fps, "fps": fps, "width": width, "height": height}


def make_probe_clips(root: Path, n_synthetic: int, *, seed: int = 0, include_real: bool = True) -> list[Path]:
    from avdag.demo.synthetic_clips import generate_sample_batch

    clips = []
    if n_synthetic:
        ids = generate_sample_batch(root, "probe", n_synthetic, seed=seed, duration_s=4.0)
        clips = [root / "probe" / "videos" / f"{clip_id}{VIDEO_SUFFIX}" for clip_id in ids]
    if include_real:
        clips.append(REAL_CLIP)
    return clips


def bench_probe(clips: Sequence[Path], repeats: int) -> dict:
    from avdag.core.ingest.video import probe_video

    methods: dict[str, Callable[[Path], object]] = {
        "avdag_probe_video": probe_video,
        "naive_full_decode": naive_full_decode_probe,
    }
    for fn in methods.values():  # warm-up: codec init, imports
        fn(clips[0])
    totals: dict[str, list[float]] = {name: [] for name in methods}
    per_clip: dict[str, dict[str, list[float]]] = {name: {str(c): [] for c in clips} for name in methods}
    results: dict[str, dict[str, object]] = {name: {} for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():  # interleaved, so drift hits both alike
            start = time.perf_counter()
            for clip in clips:
                begin = time.perf_counter()
                results[name][str(clip)] = fn(clip)
                per_clip[name][str(clip)].append(time.perf_counter() - begin)
            totals[name].append(time.perf_counter() - start)
    disagreements = []
    for clip in clips:
        probed = results["avdag_probe_video"][str(clip)]
        decoded = results["naive_full_decode"][str(clip)]
        if (probed.num_frames, probed.width, probed.height) != (
            decoded["num_frames"],
            decoded["width"],
            decoded["height"],
        ):
            disagreements.append(
                {"clip": clip.name, "probe_frames": probed.num_frames, "decoded_frames": decoded["num_frames"]}
            )
    report = {
        "clips": len(clips),
        "repeats": repeats,
        "frame_counts_agree": not disagreements,
        "disagreements": disagreements,
    }
    for name in methods:
        seconds = statistics.median(totals[name])
        report[name] = {"seconds_per_pass": seconds, "clips_per_s": len(clips) / seconds}
        if REAL_CLIP in clips:
            report[name]["real_clip_ms"] = _median_ms(per_clip[name][str(REAL_CLIP)])
    report["speedup"] = report["avdag_probe_video"]["clips_per_s"] / report["naive_full_decode"]["clips_per_s"]
    report["real_clip_frames"] = (
        results["naive_full_decode"][str(REAL_CLIP)]["num_frames"] if REAL_CLIP in clips else None
    )
    return report


def _seeded_signature(rng: random.Random, frames: int = 16) -> str:
    return "".join(f"{rng.getrandbits(64):016x}" for _ in range(frames))


def bench_twin_search(sizes: Sequence[int], queries: int, seed: int) -> dict:
    """Index vs pair-by-pair twin search over the same registered signatures, alternating first."""
    from avdag.core.ingest.near_duplicates import SignatureIndex, signature_distance

    def pairwise(query: str, pairs: list[tuple[str, str]]) -> tuple[str, float] | None:
        best = None
        for key, other in pairs:
            distance = signature_distance(query, other)
            if best is None or distance < best[1]:
                best = (key, distance)
        return best

    rng = random.Random(seed)
    rows = []
    for size in sizes:
        pairs = [(f"sha-{n}", _seeded_signature(rng)) for n in range(size)]
        index = SignatureIndex(pairs)
        # Half the queries are a registered clip with a few bits flipped (a re-encode), half are new footage.
        asked = [
            pairs[rng.randrange(size)][1][:-2] + f"{rng.getrandbits(8):02x}" if q % 2 else _seeded_signature(rng)
            for q in range(queries)
        ]
        times: dict[str, list[float]] = {"index": [], "pairwise": []}
        same = True
        for q, query in enumerate(asked):
            order = (("index", index.nearest), ("pairwise", lambda x, pairs=pairs: pairwise(x, pairs)))
            answers = {}
            for name, search in order if q % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                answers[name] = search(query)
                times[name].append(time.perf_counter() - start)
            same &= answers["index"] == answers["pairwise"]
        index_ms, pairwise_ms = (statistics.median(times[k]) * 1000 for k in ("index", "pairwise"))
        rows.append(
            {
                "registered": size,
                "queries": queries,
                "index_ms": index_ms,
                "pairwise_ms": pairwise_ms,
                "speedup": pairwise_ms / index_ms,
                "spread": [
                    min(p / i for p, i in zip(times["pairwise"], times["index"])),
                    max(p / i for p, i in zip(times["pairwise"], times["index"])),
                ],
                "same_answers": same,
            }
        )
    return {"rows": rows}


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _ratio(large: float, small: float) -> float | None:
    return large / small if small else None


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"x{value:.2f}"


def add_ratios(sensor: dict) -> dict:
    rows = sensor["rows"]
    first, last = rows[0], rows[-1]
    pairs = {"last_vs_first": first}
    if len(rows) >= 3:
        pairs["last_vs_middle"] = rows[len(rows) // 2]
    ratios = {}
    for pair, base in pairs.items():
        ratios[pair] = {
            key: _ratio(last[key], base[key])
            for key in (
                "tick_ms_median",
                "fs_calls",
                "objects_inspected",
                "naive_ms_median",
                "naive_entries",
                "cursor_bytes",
                "s3_requests",
            )
            if key in last and isinstance(last[key], (int, float))
        }
    sensor["ratios"] = ratios
    tick_ratio = ratios["last_vs_first"]["tick_ms_median"]
    sensor["within_20_percent_goal"] = tick_ratio is not None and tick_ratio <= 1.2
    return sensor


def _mib(size: int) -> str:
    return f"{size / 1024**2:g} MiB" if size >= 1024**2 else f"{size} B"


def goals(report: dict) -> dict[str, bool]:
    """Each goal the docstring states, met or not (only those the run measured)."""
    met: dict[str, bool] = {}
    sensors, sweeps = report.get("sensor", []), report.get("batches", [])
    ticks = [r for s in sensors for r in s["rows"]] + [r for b in sweeps for r in b["rows"]]
    ticks += [b["larger_clips"] for b in sweeps if "larger_clips" in b]
    if ticks:
        met["reads_no_clip_bytes"] = all(r["object_reads"] == 0 for r in ticks)
    if sensors:
        met["calls_flat_in_history"] = all(len({r["fs_calls"] for r in s["rows"]}) == 1 for s in sensors)
        met["tick_under_budget"] = all(
            s["rows"][-1]["tick_ms_median"] <= (LOCAL_TICK_BUDGET_MS if s["backend"] == "local" else S3_TICK_BUDGET_MS)
            for s in sensors
        )
    for sweep in sweeps:
        rows = sweep["rows"]
        if len(rows) >= 2:
            marginal = {(b["fs_calls"] - a["fs_calls"]) / (b["batches"] - a["batches"]) for a, b in zip(rows, rows[1:])}
            met[f"calls_linear_in_batches_{sweep['backend']}"] = len(marginal) == 1
            met[f"linear_in_batches_{sweep['backend']}"] = (
                rows[-1]["ms_per_batch"] <= LINEAR_SLACK * rows[0]["ms_per_batch"]
            )
        larger = sweep.get("larger_clips")
        if larger:
            base = rows[-1]["tick_ms_median"]
            met["flat_in_bytes"] = larger["tick_ms_median"] <= max(BYTES_SLACK * base, base + BYTES_SLACK_MS)
    twins = report.get("twin_search")
    if twins:
        met["twin_search_same_answers"] = all(r["same_answers"] for r in twins["rows"])
        met["twin_search_speedup"] = twins["rows"][-1]["speedup"] >= TWIN_SEARCH_SPEEDUP
    return met


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def format_goals(report: dict) -> list[str]:
    met = report["goals"]
    lines = ["goals:"]
    if "reads_no_clip_bytes" in met:
        reads = sum(
            r["object_reads"]
            for part in ("sensor", "batches")
            for s in report.get(part, [])
            for r in s["rows"] + ([s["larger_clips"]] if "larger_clips" in s else [])
        )
        lines.append(f"  no tick reads an object's bytes: {reads} reads -> {_verdict(met['reads_no_clip_bytes'])}")
    if "calls_flat_in_history" in met:
        calls = "; ".join(f"{s['backend']} {[r['fs_calls'] for r in s['rows']]}" for s in report["sensor"])
        lines.append(
            f"  fs calls per new-batch tick flat in history: {calls} -> {_verdict(met['calls_flat_in_history'])}"
        )
        ticks = "; ".join(
            f"{s['backend']} {s['rows'][-1]['tick_ms_median']:.2f} ms "
            f"(budget {LOCAL_TICK_BUDGET_MS if s['backend'] == 'local' else S3_TICK_BUDGET_MS:g} ms)"
            for s in report["sensor"]
        )
        lines.append(f"  new-batch tick at the largest history: {ticks} -> {_verdict(met['tick_under_budget'])}")
    for sweep in report.get("batches", []):
        b, rows = sweep["backend"], sweep["rows"]
        if f"linear_in_batches_{b}" in met:
            lines.append(
                f"  {b}: fs calls per extra batch constant: {[r['fs_calls'] for r in rows]} -> "
                f"{_verdict(met[f'calls_linear_in_batches_{b}'])}"
            )
            lines.append(
                f"  {b}: ms per batch at {rows[-1]['batches']} batches {rows[-1]['ms_per_batch']:.2f} <= "
                f"{LINEAR_SLACK:g} x {rows[0]['ms_per_batch']:.2f} at {rows[0]['batches']} -> "
                f"{_verdict(met[f'linear_in_batches_{b}'])}"
            )
        larger = sweep.get("larger_clips")
        if larger:
            base = rows[-1]["tick_ms_median"]
            lines.append(
                f"  {b}: {BYTES_FACTOR}x larger clips ({_mib(larger['clip_bytes'])}): "
                f"{larger['tick_ms_median']:.2f} ms vs {base:.2f} ms "
                f"(goal <= {BYTES_SLACK:g}x or +{BYTES_SLACK_MS:g} ms) -> {_verdict(met['flat_in_bytes'])}"
            )
    twins = report.get("twin_search")
    if twins and "twin_search_speedup" in met:
        last = twins["rows"][-1]
        lines.append(
            f"  twin search, same twin and distance as pair by pair: -> {_verdict(met['twin_search_same_answers'])}"
        )
        lines.append(
            f"  twin search over {last['registered']} clips: index x{last['speedup']:.1f} vs pair by pair "
            f"(goal >= x{TWIN_SEARCH_SPEEDUP:g}) -> {_verdict(met['twin_search_speedup'])}"
        )
    return lines


def format_twin_search(report: dict) -> list[str]:
    twins = report.get("twin_search")
    if not twins:
        return []
    lines = ["twin search per new clip (median over queries, sides alternating first)"]
    for r in twins["rows"]:
        lines.append(
            f"  {r['registered']:>6} registered  index {r['index_ms']:8.2f} ms  "
            f"pair by pair {r['pairwise_ms']:9.2f} ms  "
            f"x{r['speedup']:.1f} [x{r['spread'][0]:.1f}..x{r['spread'][1]:.1f}]  same answers: {r['same_answers']}"
        )
    return lines


def format_batches(report: dict) -> list[str]:
    lines = []
    for sweep in report.get("batches", []):
        rows = sweep["rows"]
        lines.append(
            f"sensor tick over N waiting batches, {sweep['backend']}: {rows[0]['clips_per_batch']} clips of "
            f"{_mib(rows[0]['clip_bytes'])} each, every batch launched in the tick"
        )
        for r in rows + ([sweep["larger_clips"]] if "larger_clips" in sweep else []):
            lines.append(
                f"  N={r['batches']:<4} clip {_mib(r['clip_bytes']):>8}  zone {r['bytes_in_zone'] / 1024**3:8.2f} GiB  "
                f"tick {r['tick_ms_median']:8.2f} ms  {r['ms_per_batch']:6.2f} ms/batch  "
                f"fs calls {r['fs_calls']:<4} object reads {r['object_reads']}"
            )
    return lines


def format_report(report: dict) -> str:
    """The side-by-side table (plus the call breakdown that explains it)."""
    label_w, col_w, ratio_w = 42, 16, 18
    lines: list[str] = []
    sensors = report["sensor"]
    if sensors:
        rows0 = sensors[0]["rows"]
        sizes = [r["history_clips"] for r in rows0]
        pairs = [("last_vs_first", f"x {sizes[-1]}/{sizes[0]}")]
        if len(sizes) >= 3:
            pairs.append(("last_vs_middle", f"x {sizes[-1]}/{sizes[len(sizes) // 2]}"))
        lines.append(
            f"sensor tick, new batch of {rows0[0]['new_batch_clips']} clips "
            f"({' / '.join(s['backend'] + ' ' + _mib(s['rows'][0]['clip_bytes']) for s in sensors)} each)"
        )
        lines.append(
            "".ljust(label_w)
            + "".join(f"history={s}".rjust(col_w) for s in sizes)
            + "".join(head.rjust(ratio_w) for _, head in pairs)
        )

        def add(backend: str, label: str, values: list[str], sensor: dict, ratio_keys: Sequence[str] = ()) -> None:
            line = f"  {backend:<6} {label}".ljust(label_w) + "".join(v.rjust(col_w) for v in values)
            for pair, _ in pairs if ratio_keys else ():
                line += " / ".join(_fmt_ratio(sensor["ratios"][pair].get(k)) for k in ratio_keys).rjust(ratio_w)
            lines.append(line)

        for sensor in sensors:
            b, rows = sensor["backend"], sensor["rows"]
            add(
                b,
                "batches known / re-check window",
                [f"{r['history_batches']} / {r['recheck_window']}" for r in rows],
                sensor,
            )
            add(
                b,
                f"avdag tick (ms, median of {len(rows[0]['tick_ms_all'])})",
                [f"{r['tick_ms_median']:.2f}" for r in rows],
                sensor,
                ["tick_ms_median"],
            )
            add(b, "fs calls per tick", [str(r["fs_calls"]) for r in rows], sensor, ["fs_calls"])
            add(
                b, "  of which on ingested batches", [str(r["fs_calls_by_scope"].get("known", 0)) for r in rows], sensor
            )
            add(
                b,
                "objects inspected (listed+probed)",
                [f"{r['entries_listed']}+{r['paths_probed']}" for r in rows],
                sensor,
                ["objects_inspected"],
            )
            if "s3_requests" in rows[0]:
                add(b, "S3 requests per tick", [str(r["s3_requests"]) for r in rows], sensor, ["s3_requests"])
                add(
                    b,
                    "moto: one LIST, empty prefix (ms)",
                    [f"{r['backend_list_baseline_ms']:.2f}" for r in rows],
                    sensor,
                )
            add(b, "cursor size (bytes)", [str(r["cursor_bytes"]) for r in rows], sensor, ["cursor_bytes"])
            add(
                b,
                "naive full listing (ms / entries)",
                [f"{r['naive_ms_median']:.1f} / {r['naive_entries']}" for r in rows],
                sensor,
                ["naive_ms_median", "naive_entries"],
            )
        lines.append("")
        for sensor in sensors:
            ratio = sensor["ratios"]["last_vs_first"]["tick_ms_median"]
            verdict = "within" if sensor["within_20_percent_goal"] else "beyond"
            lines.append(
                f"  (info) new-batch tick time, largest vs smallest history, {sensor['backend']}: "
                f"{_fmt_ratio(ratio)}, {verdict} 20%"
            )
        lines.append(
            "  calls per tick, method@scope (root = landing root, new = the new batch, known = ingested batches):"
        )
        for sensor in sensors:
            for r in (sensor["rows"][0], sensor["rows"][-1]):
                calls = ", ".join(f"{k} {v}" for k, v in r["fs_calls_by_method_scope"].items())
                lines.append(f"    {sensor['backend']:<5} history={r['history_clips']:<6} {calls}")
                if "s3_requests_by_op" in r:
                    ops = ", ".join(f"{k} {v}" for k, v in r["s3_requests_by_op"].items())
                    lines.append(f"    {'':<5} {'':<14} S3 requests: {ops}")
        lines.append("")
    if report.get("batches"):
        lines += format_batches(report) + [""]
    probe = report.get("probe")
    if probe:
        lines.append(
            f"ingest probe ({probe['clips']} clips, median of {probe['repeats']} passes)".ljust(label_w)
            + "clips/s".rjust(col_w)
            + "real clip (ms)".rjust(col_w + 2)
        )
        for name, label in (("avdag_probe_video", "avdag probe_video"), ("naive_full_decode", "naive full decode")):
            real = probe[name].get("real_clip_ms")
            lines.append(
                f"  {label}".ljust(label_w)
                + f"{probe[name]['clips_per_s']:.1f}".rjust(col_w)
                + (f"{real:.1f}" if real is not None else "-").rjust(col_w + 2)
            )
        lines.append(
            f"  speedup x{probe['speedup']:.1f} (clips/s); frame counts agree: {probe['frame_counts_agree']}"
            + (f"; real clip: {probe['real_clip_frames']} frames" if probe.get("real_clip_frames") else "")
        )
    if report.get("twin_search"):
        lines += [""] + format_twin_search(report)
    if "goals" in report:
        lines += [""] + format_goals(report)
    return "\n".join(lines)


def run(
    sizes: Sizes,
    *,
    seed: int = 0,
    backends: Sequence[str] = ("local", "s3"),
    probe: bool = True,
    log: Callable[[str], None] = lambda m: None,
) -> dict:
    started = time.perf_counter()
    report: dict = {
        "sizes": sizes.__dict__ | {"history_clips": list(sizes.history_clips)},
        "seed": seed,
        "sensor": [],
        "batches": [],
        "environment": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    for name in backends:
        log(f"sensor tick on {name} ...")
        backend = LocalBackend() if name == "local" else S3Backend()
        try:
            sensor = bench_sensor(
                backend,
                sizes.history_clips,
                clips_per_batch=sizes.clips_per_batch,
                new_batch_clips=sizes.new_batch_clips,
                repeats=sizes.tick_repeats,
                naive_repeats=sizes.naive_repeats,
                seed=seed,
                clip_bytes=sizes.clip_bytes,
            )
            log(f"batch sweep on {name} ...")
            report["batches"].append(
                bench_batches(
                    backend,
                    sizes.batch_sweep,
                    clips_per_batch=sizes.sweep_clips_per_batch,
                    clip_bytes=sizes.clip_bytes,
                    repeats=sizes.tick_repeats,
                    seed=seed,
                )
            )
        finally:
            backend.close()
        report["sensor"].append(add_ratios(sensor))
    if probe:
        log("ingest probe ...")
        with tempfile.TemporaryDirectory(prefix="avdag-bench-probe-") as tmp:
            clips = make_probe_clips(Path(tmp), sizes.probe_synthetic_clips, seed=seed)
            report["probe"] = bench_probe(clips, sizes.probe_repeats)
    log("twin search ...")
    report["twin_search"] = bench_twin_search(sizes.twin_search_sizes, sizes.twin_search_queries, seed)
    report["goals"] = goals(report)
    report["total_s"] = time.perf_counter() - started
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="history 10/200/500 clips, 5 synthetic probe clips (< 20 s)"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("local", "s3"), action="append", help="default: both")
    parser.add_argument("--no-probe", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    report = run(
        QUICK if args.quick else FULL,
        seed=args.seed,
        backends=args.backend or ("local", "s3"),
        probe=not args.no_probe,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    print(format_report(report))
    print(f"\n(total {report['total_s']:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    missed = [name for name, met in report["goals"].items() if not met]
    if args.check and missed:
        print(f"bench_ingest --check: goals missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
