"""The SFT checkpoint trained on the train split of every clip batch."""
