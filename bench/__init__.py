"""Benchmarks that compare Tentacle against a real peer in the same run (python -m bench NAME)."""
