"""The imsg protocol, sans I/O: no network, no disk, no clock or RNG reads.

Operations take `now` (milliseconds since the epoch) and `rng` (a callable returning
`n` random bytes) as parameters, and their stores as arguments; that is what makes the
known-answer and two-party tests deterministic. docs/PROTOCOL.md is the specification.
"""
