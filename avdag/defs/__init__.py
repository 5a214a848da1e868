"""The Dagster layer, one folder per stage (assets with their checks and sensors); `pipeline` holds jobs, schedule, partitions, pools, code versions."""
