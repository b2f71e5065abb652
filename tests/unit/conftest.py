"""Hypothesis profiles for the unit tests.

`HYPOTHESIS_PROFILE=ci` runs 10,000 examples per property (SECURITY-TESTS R9); the
default "dev" profile runs a few hundred so that `pytest tests/unit` stays quick.
Tests that want fewer examples than the profile (the stateful model) say so themselves.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

settings.register_profile("dev", max_examples=300, **_COMMON)
settings.register_profile("ci", max_examples=10_000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
