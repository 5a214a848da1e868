"""raw_clips and clip_quarantine per upload batch, splits, the landing sensor, the leak check."""
