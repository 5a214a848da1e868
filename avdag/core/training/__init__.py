"""Supervised fine-tuning of the captioning model on the train split.

- `embedded_loop`: train_sft, SftSettings, SftExample, SftResult (plain PyTorch)
- `cosmos_rl`: train_with_cosmos_rl (the recipe's trainer, on GPU nodes)
"""
