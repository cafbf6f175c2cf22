"""The orchestration room: rollout, sweep, demo, fleets, the client benchmark and the smoke
after deploy.

The only package that uses both `deploy` (containers) and `bench` (measurement); neither of those
imports the other. Tools elsewhere that must deploy (the gate benchmark) do it through here.
"""

from gh200.deploy.deploy import deploy, stop
from gh200.deploy.tinymodel import ensure_tiny_model

__all__ = ["deploy", "ensure_tiny_model", "stop"]
