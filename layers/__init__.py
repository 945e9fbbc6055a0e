"""Your own layers: a layer class in a file of this folder can be used in any config.

Every module in this folder is imported when the package is (config.py and model.py import it,
so before any config is checked or any network built). A class decorated with
`nn_module.register` is then in `nn_module.LAYERS` under its own class name, which is the
config's "class"; it keeps the layer contract of `nn_module.NNModule` (see README.md, "Your own
layers"). A saved model stores its config and arrays, never code: the file that defines a layer
must still be here when a model using it is loaded for test, plot or predict.

A file that fails to import (a syntax error, a name registered twice) does not stop runs that
use other layers: its error is kept in BROKEN and shown when a class that is not registered is
asked for.
"""
import importlib
import pkgutil
import sys

import nn_module

BROKEN = {}     # module file name -> why it could not be imported


def discover_modules(package, broken, registries):
    """Imports every module of `package` (a package module, found on its __path__) not imported yet,
    so that its classes register. A module that fails is recorded in `broken` (file name -> reason)
    instead of raising, and the entries it added to any of the `registries` (dicts) before failing
    are taken out again: they belong to a half-run file. datasets/ discovers its files with it too."""
    for module in pkgutil.iter_modules(package.__path__):
        if module.name in broken:
            continue
        snapshots = [dict(registry) for registry in registries]
        try:
            importlib.import_module(f"{package.__name__}.{module.name}")
        except Exception as err:        # a user's file can fail in any way; the others still work
            for registry, snapshot in zip(registries, snapshots):
                registry.clear()
                registry.update(snapshot)
            where = f" line {err.lineno}" if isinstance(err, SyntaxError) else ""
            broken[module.name] = f"{package.__name__}/{module.name}.py{where}: {type(err).__name__}: {err}"


def discover():
    """Imports every module of this package not imported yet, so that its layers register
    (a failing one goes to BROKEN, and the layers and losses it registered are taken out:
    `discover_modules`)."""
    discover_modules(sys.modules[__name__], BROKEN, [nn_module.LAYERS, nn_module.LOSSES])


def broken_files():
    """'; <reason>' for every file that could not be imported, to end an unknown-class message."""
    return "".join(f"; {reason}" for reason in BROKEN.values())


discover()
