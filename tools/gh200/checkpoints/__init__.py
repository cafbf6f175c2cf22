"""gh200 checkpoints."""
