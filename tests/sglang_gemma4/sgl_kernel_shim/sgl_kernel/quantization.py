"""sgl_kernel.quantization: imported at module level on SGLang's CUDA path (GGUF quantization, which Gemma4 refuses); every name is a stand-in
that raises when called."""

from sgl_kernel import _missing


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing(f"sgl_kernel.quantization.{name}")
