"""Fixtures shared by the fault-injection suite."""

from __future__ import annotations

import pytest

from tests.faults._util import zygote


@pytest.fixture
def z(request):
    """Runs scripts in fresh processes forked from one that imported torch once."""
    return zygote(request)
