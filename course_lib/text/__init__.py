"""Words, never pixels: the caption vocabulary and the tokenizer.

    vocabulary  digit and attribute words, caption templates, prompt sets, ``parse_prompt``
    tokenizer   the word-level tokenizer; ``validate_prompt`` / ``check_prompts``

May import: the base. Never ``data/`` (the tokenizer needs no images), nor anything above.
"""
