"""Static baselines (no dynamic decisions), the reference every dynamic model is compared to."""
