"""The model-backed coder: OpenAI-compatible endpoints, prompts, answer parsing, limits."""
