"""Shared fixtures live in plugin modules, one per owner, so parallel work does not collide here."""

from strop._env import set_process_defaults

# The tests are strop's own process, like the CLI: offline hub, passive OpenMP waits (strop/_env.py).
set_process_defaults()

pytest_plugins = ["tests.fixtures_models", "tests.fixtures_db"]
