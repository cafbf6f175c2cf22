"""Orchestration: the jobs that use both deploy and bench (rollout, upgrade, fleets)."""
