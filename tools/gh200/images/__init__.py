"""gh200 images."""
