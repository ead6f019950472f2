"""Tentacle: a deployment agent for Linux hosts, and the protocol it shares with server_shim.

Importing this package (or any of its modules) changes nothing in the process: the
agent's own start-up choices live in `tentacle.agent.command_line`.
"""

__version__ = "0.1.0"
