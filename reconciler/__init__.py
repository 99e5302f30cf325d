"""reconcile: a declarative reconciler for machine-learning storage."""

__version__ = "0.1.0"
