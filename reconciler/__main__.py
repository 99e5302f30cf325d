"""`python -m reconciler` runs the CLI."""

from .cli import main

if __name__ == "__main__":  # not when a `spawn`ed worker process imports this module as its main
    main(prog_name="reconcile")
