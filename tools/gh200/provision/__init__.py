"""gh200 provision."""
