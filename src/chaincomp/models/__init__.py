"""Model zoo: name -> constructor. Models hold no technique."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import UserError
from . import classification as _cls
from . import imported

ZOO: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": _cls.cifar_resnet(d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet34": _cls.resnet34,
    "vgg11": _cls.vgg_by_name("vgg11"),
    "vgg19": _cls.vgg_by_name("vgg19"),
    "digits_cnn": _cls.vgg_by_name("digits_cnn"),
    "digits_vgg": _cls.vgg_by_name("digits_vgg"),
}


def _register_optional() -> None:
    """Task models for segmentation and super-resolution live in their own modules."""
    try:
        from . import segnet
        ZOO["segnet"] = segnet.SegNet if hasattr(segnet, "SegNet") else segnet.segnet
    except (ImportError, AttributeError):
        pass
    try:
        from . import sr
        for name in ("espcn", "fsrcnn", "edsr_small"):
            for attr in (name, name.upper(), "EDSR" if name == "edsr_small" else name):
                if hasattr(sr, attr):
                    ZOO[name] = getattr(sr, attr)
                    break
    except ImportError:
        pass


_register_optional()


def build_model(name: str | None = None, **kwargs) -> nn.Module:
    """Build a zoo model; the spec is recorded on the model so a checkpoint can rebuild it. A spec with
    `import` (or `given`) is a user's own model, cut into blocks by `imported.build`."""
    if name is None and imported.is_spec(kwargs):
        return imported.build(kwargs)
    if name not in ZOO:
        raise UserError(f"model.name: unknown model '{name}'; choose one of {', '.join(sorted(ZOO))}")
    model = ZOO[name](**kwargs)
    model.chaincomp_arch = {"model": {"name": name, **kwargs}, "transforms": []}
    return model
