"""The Dagster layer, one folder per stage (assets with their checks and sensors).

`pipeline` holds the jobs, schedule, partitions, pools and code versions."""
