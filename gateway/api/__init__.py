"""The OpenAI surface: parsing, auth, answers, errors and streaming."""
