"""Shared test configuration: markers, hypothesis profiles, the Triton interpreter, NaN-poisoned allocations."""

from __future__ import annotations

import os

# Kernels must see TRITON_INTERPRET before any kernel module is imported; on a machine without a
# CUDA device the Triton kernels run under the interpreter (tiny shapes only).
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

# Hypothesis profiles. Hypothesis itself loads a profile named "ci" when the CI variable is set; ours is
# built on it (derandomized, no deadline, a fixed example budget that keeps CI within its time).
settings.register_profile(
    "ci",
    parent=settings.get_profile("ci"),
    derandomize=True,
    deadline=None,
    max_examples=40,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "nightly",
    max_examples=1000,
    deadline=None,
    phases=list(Phase),
    suppress_health_check=[HealthCheck.too_slow],
)
#: The active profile: OSDN_HYPOTHESIS_PROFILE if set, else "ci" when the CI variable is set, else "dev".
HYPOTHESIS_PROFILE = os.environ.get("OSDN_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
settings.load_profile(HYPOTHESIS_PROFILE)

#: Examples per ``@given`` bound test in tests/test_bounds_property.py, by profile. The bound tests are cheap
#: (one token through the float64 recurrence) and a bound violated only near its edge (write gain near 2)
#: needs a few hundred examples for ``target()`` to climb there, so they run far more than the default budget;
#: "ci" is the budget the planted-overshoot test in that file proves sufficient.
BOUND_EXAMPLES = {"ci": 500, "dev": 100, "nightly": 5000}


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where a CUDA device exists; elsewhere they are skipped with a stated reason.

    Interpreter tests (CPU tensors through Triton kernels) need TRITON_INTERPRET=1, which is set above on
    machines without CUDA; on a GPU machine they are skipped unless it was set by the caller.
    """
    if _HAS_CUDA:
        if os.environ.get("TRITON_INTERPRET") != "1":
            skip_i = pytest.mark.skip(reason="Triton interpreter test: run with TRITON_INTERPRET=1")
            for item in items:
                if "interpreter" in item.keywords:
                    item.add_marker(skip_i)
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: run `pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


_real_empty = torch.empty
_real_empty_like = torch.empty_like


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point() and t.numel():
        t.fill_(float("nan"))
    return t


@pytest.fixture(autouse=True)
def nan_poisoned_allocations(monkeypatch):
    """Fill every floating ``torch.empty``/``empty_like`` with NaN so an unwritten output fails loudly."""
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(_real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(_real_empty_like(*a, **k)))
    yield
