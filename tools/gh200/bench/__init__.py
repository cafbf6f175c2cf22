"""gh200 bench."""
