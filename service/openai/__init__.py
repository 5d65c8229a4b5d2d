"""The OpenAI-compatible layer: the Completions API's shapes (`schemas`), its error envelope
(`errors`), and a completion request in flight with its SSE chunks (`job`)."""
