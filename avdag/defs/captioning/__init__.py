"""Baseline and fine-tuned captions per clip batch, and their parse checks."""
