"""fvlm: a foveated video vision-language model that spends one token per frame.

    import fvlm
    model = fvlm.load()                       # the small default model shipped in the package
    out = model.generate("clip.mp4", "What color is the triangle?")
    out.text, out.attention, out.frames, out.timestamps

Heavy imports (torch, transformers) happen on first use, so `import fvlm` stays cheap.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "load": "fvlm.hub",
    "FVLMConfig": "fvlm.config",
    "FoveatedVLM": "fvlm.model",
    "MultiTokenVLM": "fvlm.baseline",
    "GenerateOutput": "fvlm.generation",
    "errors": "fvlm.errors",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fvlm' has no attribute {name!r}")
    module = import_module(_EXPORTS[name])
    return module if name == "errors" else getattr(module, name)
