"""``python -m training.collect``: the ``perfcost collect`` group on its own (the tests run it this way)."""

from training.collect.cli import app

if __name__ == "__main__":
    app()
