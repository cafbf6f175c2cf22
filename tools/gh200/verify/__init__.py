"""gh200 verify."""
