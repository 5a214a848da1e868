"""An LLM judge scoring each answer against the human label, field by field.

- `items`: JudgeItem, plan_judge_items, parse_judge_score, summarize_scores
- `judges`: Judge protocol, OpenAIChatJudge, JudgeVerdict
- `offline_judge`: OfflineEmbeddingJudge (no key, no network)
- `score_captions`: score_captions, judge_items (cache-first, one call for a whole clip batch)
- `verdict_cache`: JudgeCache
- `batch_api`, `batch_api_ledger`: the OpenAI Batch API judge and its submission ledger
- `calibration`: calibration_items, summarize_calibration
"""
