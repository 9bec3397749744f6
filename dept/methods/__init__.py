"""Text-side prompt methods (CoOp, CoCoOp, KgCoOp, ...), one module each, found by name in ``METHODS``.

A new method is one new file here, named as the method and registering it with ``@register_method("name")``.
The registry is loaded on first use (it imports torch); :func:`method_names` answers without loading it, from the
module names, so a command line checks ``--method`` at once.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import TYPE_CHECKING, Any

_REGISTRY_NAMES = ("METHODS", "MethodOptions", "PromptMethod", "register_method")
__all__ = [*_REGISTRY_NAMES, "method_names"]


def method_names() -> tuple[str, ...]:
    """The methods a trial can use: every registered name once the registry is loaded (methods registered at run
    time too), else the method modules shipped here (one per method, named as it), without importing them."""
    if f"{__name__}.base" in sys.modules:  # loaded (torch with it): the registry, every module registered
        return tuple(__getattr__("METHODS"))
    return tuple(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base")


def __getattr__(name: str) -> Any:
    if name not in _REGISTRY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    base = importlib.import_module(f"{__name__}.base")
    # Import every module of this package so that each registers its method: a new method is one new file.
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    for n in _REGISTRY_NAMES:
        globals()[n] = getattr(base, n)
    return globals()[name]


if TYPE_CHECKING:
    from dept.methods.base import METHODS, MethodOptions, PromptMethod, register_method
