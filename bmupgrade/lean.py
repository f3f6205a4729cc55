"""Start-up cost of third-party modules bmupgrade does not use (issue 15).

Two import-time costs are avoided by standing in for a module *only while a known importer
loads it*, through one finder on `sys.meta_path`; nothing else changes:

* **pydantic's plugin scan.** The first model or TypeAdapter built (typer builds TypeAdapters
  to coerce a command's parameters) makes pydantic import `importlib.metadata` and scan every
  installed distribution's entry points for plugins: ~25 ms of a ~0.2 s `plan`. bmupgrade uses
  no plugin, and a third-party one (tracing every validation, say) has no business in a runbook
  check. `PYDANTIC_DISABLE_PLUGINS=__all__` skips the scan but not the import, so the loader
  module is provided instead: its one function, `get_plugins()`, returns no plugins (pydantic 2
  only; with any other version the real module loads).
* **invoke's `unittest.mock`.** Fabric's base, `invoke.context`, imports `unittest.mock` (and
  with it asyncio: ~30 ms idle, ~75 ms under load) at module level for `MockContext`, a test
  helper; `Mock` is a stand-in there too.
* **typer's help renderer.** `typer.rich_utils` imports `rich.markdown` (markdown-it, ~30 ms)
  and `rich.traceback` (~15 ms) at module level, for a markup mode and pretty tracebacks that
  bmupgrade does not use (rich markup; `pretty_exceptions_enable=False`): ~40 % of `--help`.
  While `typer.rich_utils` executes, those two names are stand-in classes that import and
  return the real class if ever used; any other importer gets the real modules.
* **paramiko's version.** `paramiko/__init__.py` sets `__version__` with
  `importlib.metadata.version("paramiko")`: importing importlib.metadata (email, zipfile, csv)
  and finding the distribution cost ~30-60 ms of every run. While paramiko loads,
  `importlib.metadata.version` reads the version from the name of the `.dist-info` directory
  on sys.path (the real function if there is none).
"""

from __future__ import annotations

import sys
import types

PYDANTIC_LOADER = "pydantic.plugin._loader"
TYPER_HELP = "typer.rich_utils"
INVOKE_CONTEXT = "invoke.context"
PARAMIKO = "paramiko"
# module loaded -> the (module, name) it imports at module level but rarely uses
DEFERRED = {
    TYPER_HELP: (("rich.markdown", "Markdown"), ("rich.traceback", "Traceback")),
    INVOKE_CONTEXT: (("unittest.mock", "Mock"),),  # only for invoke's MockContext (tests)
    PARAMIKO: (("importlib.metadata", "version"),),  # only for paramiko.__version__
}


def install() -> None:
    """Idempotent."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


class _Finder:
    def find_spec(self, name, path=None, target=None):
        if name == PYDANTIC_LOADER:
            pyd = sys.modules.get("pydantic")
            if pyd is not None and str(getattr(pyd, "VERSION", "")).startswith("2."):
                from importlib.machinery import ModuleSpec

                return ModuleSpec(name, _NoPlugins())
            return None
        if name in DEFERRED:
            return self._deferring_spec(name)
        return None

    def _deferring_spec(self, name):
        from importlib.machinery import PathFinder

        parent = sys.modules.get(name.rpartition(".")[0])
        spec = PathFinder.find_spec(name, getattr(parent, "__path__", None))
        if spec is not None and spec.loader is not None:
            spec.loader = _Deferring(spec.loader, DEFERRED[name])
        return spec


class _NoPlugins:
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__doc__ = "bmupgrade: no pydantic plugins (see bmupgrade/lean.py)"
        module.get_plugins = lambda: ()


def _deferred_class(modname: str, clsname: str) -> type:
    def real():
        import importlib

        return getattr(importlib.import_module(modname), clsname)

    return type(clsname, (), {
        "__module__": __name__,
        "__doc__": f"Stands for {modname}.{clsname}: imports it when first used.",
        "__new__": lambda cls, *a, **kw: real()(*a, **kw),
        "from_exception": classmethod(lambda cls, *a, **kw: real().from_exception(*a, **kw)),
    })


def _installed_version(dist: str) -> str:
    """importlib.metadata.version(dist), read from the name of its `NAME-VERSION.dist-info`."""
    import os

    prefix = dist.replace("-", "_").lower() + "-"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for n in names:
            version = n[len(prefix):-len(".dist-info")]
            if n.endswith(".dist-info") and n.lower().startswith(prefix) and version and "-" not in version:
                return version
    sys.modules.pop("importlib.metadata", None)  # the stand-in: let the real module load
    import importlib.metadata

    return importlib.metadata.version(dist)


# (module, name) -> what stands for it while its importer loads; any other name of DEFERRED
# gets a class that imports the real one when first used
STAND_INS = {("importlib.metadata", "version"): _installed_version}


class _Deferring:
    def __init__(self, real, deferred):
        self.real = real
        self.deferred = deferred

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        stubs = {}
        for modname, clsname in self.deferred:
            if modname not in sys.modules:
                stub = types.ModuleType(modname)
                setattr(stub, clsname, STAND_INS.get((modname, clsname)) or _deferred_class(modname, clsname))
                stubs[modname] = sys.modules[modname] = stub
        try:
            self.real.exec_module(module)
        finally:
            for modname, stub in stubs.items():
                if sys.modules.get(modname) is stub:
                    del sys.modules[modname]
