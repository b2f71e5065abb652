"""Implementations of the store interfaces in `imsg_cli.protocol.stores`."""
