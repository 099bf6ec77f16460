"""The ``osdn`` command line: ``osdn verify`` (the claims report), ``osdn sweep``, ``osdn plot``, ``osdn train``."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="osdn",
    help="Verify the theory of OSDN (Online Scaled DeltaNet) and run its synthetic experiments.",
    no_args_is_help=True,
    add_completion=False,
)


def _register() -> None:
    # Each sub-package owns its commands; this module only assembles them.
    from .claims.cli import register as register_claims
    from .sweeps.cli import register as register_sweeps
    from .train.cli import register as register_train

    register_claims(app)
    register_sweeps(app)
    register_train(app)


_register()

if __name__ == "__main__":  # pragma: no cover
    app()
