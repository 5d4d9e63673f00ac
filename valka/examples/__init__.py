"""Runnable examples: `python -m valka.examples.worker` and `python -m valka.examples.producer`."""
