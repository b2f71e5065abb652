"""Implementations of the store interfaces in `imsg.protocol.stores`."""
