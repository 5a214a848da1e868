"""From an upload batch in the landing zone to registered clips and stable splits.

- `landing`: LandingZone (a folder or s3://), BatchListing
- `upload_watch`: plan_tick (which upload batches a sensor tick launches)
- `upload_batch`: ingest_batch, QuarantineRecord, IngestLimits
- `registry`: ClipRegistry (dedup by content hash across upload batches)
- `video`: probe_video, sample_frames (recipe-exact frame sampling)
- `splits`: assign_splits, leaks
- `staleness`: batches_to_reprocess
"""
