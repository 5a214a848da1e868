"""The baseline vs fine-tuned comparison and the clip catalog."""
