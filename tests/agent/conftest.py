"""Fixtures of the agent tests (the helpers live in agent_harness.py)."""

from .agent_harness import agents  # noqa: F401
