"""Plain-Python domain logic, one sub-package per stage a clip goes through; none imports Dagster.

common -> ingest -> captioning -> training -> judging -> reporting: each layer uses only the ones before it.
"""
