"""Event sources: synthetic traffic (and, later, stream consumers and JSONL replay)."""
