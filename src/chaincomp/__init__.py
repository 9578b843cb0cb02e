"""chaincomp: chains of CNN compression (distill, prune, quantize, early exit, feature-map coding),
with every figure measured from the model."""
__version__ = "0.1.0"


def compress(*args, **kwargs):
    """See chaincomp.api.compress (imported lazily so `import chaincomp` stays cheap)."""
    from .api import compress as _compress

    return _compress(*args, **kwargs)


__all__ = ["compress", "__version__"]
