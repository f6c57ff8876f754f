"""End-to-end jobs built from the library parts (what the CLI commands call)."""
