"""width."""
