"""Only what the embedded default needs: synthetic clips, the tiny model, the sample upload batch.

Product code reaches this package only through the captioner resource that chooses the embedded model.
- `synthetic_clips`: generate_sample_batch (rendered dashcam-like clips with exact labels)
- `tiny_model`: build_embedded_model
- `sample_batch`: write_sample_batch
- `sample_data`: the real clip shipped with avdag
"""
