"""The Ray instance the distributed tests share: a fresh local one per test module.

`address="local"` starts a new instance even when another one runs on this machine (another test
run, a `ray start` of the user's): joining that one would fail on `num_cpus` or share its workers.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

NO_RAY = "Ray is not installed (pip install 'mlc[distributed]')"


def local_ray(module_name: str) -> Iterator[str]:
    """Start Ray with 2 CPUs for the tests of `module_name`; yields its GCS address."""
    ray = pytest.importorskip("ray", reason=NO_RAY)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[module_name])  # workers cannot import test modules
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
