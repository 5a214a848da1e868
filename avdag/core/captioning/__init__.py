"""A video-language model answering the rubric for each clip.

- `model`: GenerationSettings, CaptionOutput, load_model_and_processor
- `engine`: VlmCaptioner (local, batched generate over devices)
- `remote`: OpenAIVlmCaptioner (vLLM/NIM servers)
- `caption_cache`: caption_clips (resumable, one cached result per caption identity), Captioner protocol
- `answers`: parse_answer, answer_is_complete
- `conversations`: caption_messages, sft_messages
- `prompts`: load_prompt_set, PromptSet
"""
