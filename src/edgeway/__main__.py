"""``python -m edgeway`` runs the CLI."""

from .cli.main import app

app()
