"""``osdn verify`` (placeholder until the claims engine lands)."""


def register(app) -> None:
    @app.command()
    def verify() -> None:
        """Check every OSDN theory claim and write a report."""
        raise SystemExit("osdn verify: the claims engine is not built yet")
