"""Makes this Python look like the GPU lease's bare image (torch, no open_clip / Ray / MLflow) for checking
bench/gpu.sh here: put this folder first on PYTHONPATH. The packages the image lacks import only from the folder
that gpu.sh installs the carried wheels into ($DEPT_WHEEL_SITE, default /tmp/site)."""
import importlib.abc
import os
import sys

ABSENT = ("open_clip", "ray", "mlflow", "ftfy", "wcwidth")
SITE = os.path.realpath(os.environ.get("DEPT_WHEEL_SITE", "/tmp/site"))


class _Bare(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in ABSENT:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                origin = os.path.realpath(spec.origin or next(iter(spec.submodule_search_locations or []), ""))
                if origin.startswith(SITE + os.sep):
                    return spec
                raise ModuleNotFoundError(f"No module named {name!r} (the bare GPU image has none; only {SITE})")
        return None


sys.meta_path.insert(0, _Bare())
