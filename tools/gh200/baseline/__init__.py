"""This host's own baselines: host facts, accepted run sets, the noise-aware gate, the history page."""
