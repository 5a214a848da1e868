"""An LLM judge scoring each answer against the human label, field by field.

- `items`: JudgeItem, plan_judge_items, parse_judge_score, summarize_scores
- `judges`: Judge protocol, OpenAIChatJudge, JudgeVerdict
- `rate_limits`: RatePacer (the OpenAI judge's pacing under requests/tokens-per-minute limits)
- `offline_judge`: OfflineEmbeddingJudge (no key, no network; free text ranked against a reference pool)
- `score_captions`: score_captions, judge_items (cache-first, one call for a whole clip batch)
- `verdict_cache`: JudgeCache
- `batch_api`, `batch_api_ledger`: the OpenAI Batch API judge and its submission ledger
- `calibration`: calibration_items, calibration_table, summarize_calibration (right vs wrong, per field)
- `paraphrase`: paraphrase_answer (the calibration's right answer in other words)
"""
