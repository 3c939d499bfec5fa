"""Stand-ins for modules absent from the test environment that slime's code imports at module
level around the code under test (Ray, HTTP clients, loggers), for the checks that drive slime's
own rollout, replay and weight-sync code on the CPU. Only the listed names are stubbed, and only
when absent; the stubs do nothing, and every name stubbed is listed in STUBBED for the report.
"""

from __future__ import annotations

import importlib.util
import sys
from unittest import mock

# stubbed when absent: what the HTTP, Ray and logging layers around the code under test import
# at module level (everything else absent stays absent, so optional imports behave as they do)
STUB = {"ray", "torch_memory_saver", "sglang_router", "wandb", "setproctitle", "httpx", "tensorboard",
        "pylatexenc", "pyarrow", "accelerate"}
STUBBED: list[str] = []


class _StubFinder:
    """Last on sys.meta_path: a module no finder has becomes a stub (import-time needs of the
    HTTP, Ray and logging layers around the code under test), and is listed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in STUB:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        module = mock.MagicMock(name=spec.name)
        module.__path__ = []
        module.__spec__ = spec
        module.__version__ = "0.0.0"
        module.__all__ = []
        if "." not in spec.name:
            STUBBED.append(spec.name)
        return module

    def exec_module(self, module):
        pass


def install(*extra: str) -> None:
    """Stub STUB (and extra) where absent; idempotent."""
    STUB.update(extra)
    if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        sys.meta_path.append(_StubFinder())
