"""Chat above the engine: normalizing messages, tool prompts and grammars, parsing outputs."""
