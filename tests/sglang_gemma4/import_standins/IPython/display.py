"""Stand-ins for the two names sglang/utils.py imports; calling either says it is a stand-in."""


def _absent(*args, **kwargs):
    raise RuntimeError("IPython is not installed here: this is engine_cycle.py's import stand-in")


HTML = display = _absent
