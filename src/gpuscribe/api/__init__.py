"""HTTP API: gpuscribe's own endpoints and the OpenAI-compatible ones."""
