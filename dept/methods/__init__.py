"""Text-side prompt methods (CoOp, CoCoOp, KgCoOp, ...), one module each, found by name in ``METHODS``."""
import importlib
import pkgutil

from dept.methods.base import METHODS, MethodOptions, PromptMethod, register_method

# Import every module of this package so that each registers its method: a new method is one new file.
for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "MethodOptions", "PromptMethod", "register_method"]
