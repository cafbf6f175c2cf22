"""gh200 profiles."""
