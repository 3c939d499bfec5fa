"""Test-only stand-in, put on the path by engine_cycle.py only where IPython is absent (the GPU
machine): SGLang's `sglang/utils.py` imports IPython.display at module level for notebook helpers
that the engine never calls."""
