"""Tentacle: a deployment agent for Linux hosts, and the protocol it shares with server_shim."""

__version__ = "0.1.0"
