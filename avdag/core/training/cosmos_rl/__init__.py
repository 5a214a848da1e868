"""cosmos-rl SFT: job config (`config`), dataset JSONL (`dataset`), launcher and export install
(`launcher`), and the script cosmos-rl runs (`entry`)."""
