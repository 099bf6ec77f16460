"""``osdn sweep`` and ``osdn plot`` (placeholder until the sweep runner lands)."""


def register(app) -> None:
    @app.command()
    def sweep() -> None:
        """Run a sweep file."""
        raise SystemExit("osdn sweep: not built yet")
