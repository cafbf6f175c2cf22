"""gh200 deploy."""
