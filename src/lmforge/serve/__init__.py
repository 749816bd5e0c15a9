"""Serving: the OpenAI-compatible HTTP server and the chat page, on top of the inference engine."""
