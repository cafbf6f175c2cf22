"""gh200 ruler."""
