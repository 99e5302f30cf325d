"""`python -m reconciler` runs the CLI."""

from .cli import run

if __name__ == "__main__":  # not when a `spawn`ed worker process imports this module as its main
    run()
