"""patchstack: pinned upstreams, versioned patch series, validated atomic apply."""

__version__ = "0.1.0"
