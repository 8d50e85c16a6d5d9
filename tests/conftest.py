"""Shared fixtures live in plugin modules, one per owner, so parallel work does not collide here."""

pytest_plugins = ["tests.fixtures_models", "tests.fixtures_db"]
