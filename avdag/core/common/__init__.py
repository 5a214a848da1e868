"""What every stage shares.

- `atomic`: atomic_path, write_bytes_atomic, write_json_atomic, atomic_directory
- `labels`: the 15-field rubric (FIELDS, FIELD_COUNT), validate_label, canonicalize_label
- `http_retry`: retry policy for OpenAI-compatible servers
- `database`: Database (SQLite or Postgres by URL: the registry, verdict cache and judge-batch ledger's store)
- `model_identity`: model_fingerprint, weights_sha256
- `state_store`: StateStore (AVDAG_STATE_URL, a folder or s3://: files, folders complete by marker, scratch copies)
- `paths`, `package_files`: where state and shipped files live
"""
