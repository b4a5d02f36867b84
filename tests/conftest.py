"""Hypothesis profiles: CI runs a fixed set of examples (a red CI is reproducible); local runs
explore new examples each time. HYPOTHESIS_PROFILE=ci|dev overrides the choice."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
