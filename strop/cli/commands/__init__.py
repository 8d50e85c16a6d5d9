"""CLI command groups. Each module imports only typer and the standard library at module level."""
