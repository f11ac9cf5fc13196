"""What a head is: the one interface every model on f(x) implements, and the registry that finds them by kind.

A head is a folder of :mod:`dfr.heads` (``dfr/heads/<kind>/``), or a module that an installed distribution
names under the entry-point group ``dfr.heads`` (``[project.entry-points."dfr.heads"] <kind> = "pkg.mod:HEAD"``),
or an object passed to :func:`register` in the same process. Its module defines ``HEAD``, an instance of a
:class:`Head` subclass, and imports no torch: the planning side (the config section, the params and key, whether
it uses PCA, what the held-out images choose, the resources of its jobs and its file's size) is read by the
Snakefile and by every job's start-up. Its model side (:meth:`Head.fit`, :meth:`Head.from_checkpoint`) imports
torch and the head's model module where it is called.

The rest of the package looks a head up by its kind (the config's ``model``, a checkpoint's ``kind``) and names
none: the schema's ``model`` choices and head sections, :mod:`dfr.planning.keys`, :mod:`dfr.planning.resources`,
the maps, ensembles, bundles, ``dfr predict`` and ``dfr export`` all go through this interface.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

import yaml

from dfr.io import DFRError

MB = 2**20
_MISSING = object()


class Head:
    """The interface of a head. A subclass sets the class attributes and implements :meth:`fit` and
    :meth:`from_checkpoint`; the other methods have defaults that fit a head whose settings all shape its model.

    Contracts:

    * ``kind``: the config's ``model`` value, the name of the head's config section, and the ``kind`` its
      checkpoints carry;
    * ``schema``: the JSON schema of that section (an object whose properties have defaults);
    * ``version``: the code version of its fit and A(x), in its params and so in its key; bump it when a change
      alters what it writes, and pin the new output in ``golden`` (``{version: (input digest, output digest)}``,
      checked by tests/test_golden.py for the shipped heads);
    * ``runtime_only``: settings of its section that change how fast a model is made, not what it is (in no key);
    * ``later_defaults``: settings added after models were made; at this value they stay out of the params, so
      that those models' keys stay valid.
    """

    kind: str = ""
    title: str = ""  # one line for the schema's ``model`` description
    schema: dict = {"type": "object", "properties": {}}
    version: int = 1
    golden: dict = {}
    runtime_only: tuple[str, ...] = ()
    later_defaults: dict = {}

    # ---- planning (torch-free) ----

    def section(self, cfg: dict) -> dict:
        return cfg.get(self.kind) or {}

    def params(self, cfg: dict) -> dict:
        """What shapes the model beside the device and the code version (:func:`dfr.planning.keys.model_params`
        adds them): by default its kind, its section (runtime-only settings and later defaults at their
        default left out) and the run's seed."""
        own = {k: v for k, v in self.section(cfg).items()
               if k not in self.runtime_only and self.later_defaults.get(k, _MISSING) != v}
        return {"kind": self.kind, **own, "seed": cfg["seed"]}

    def key_prefix(self, params: dict) -> str:
        """The readable start of the model's key (its digest follows)."""
        return self.kind

    def uses_pca(self, cfg: dict) -> bool:
        """Whether the model is fitted with the category's pca.json (PCA's d)."""
        return False

    def validation_choices(self, cfg: dict) -> list[str]:
        """What the held-out normal images choose in its fit besides the thresholds (then optimistic), e.g.
        a checkpoint or a stopping epoch."""
        return []

    def runtime(self, cfg: dict) -> dict:
        """Its runtime-only settings, for the job (dotted in :data:`dfr.planning.overrides.RUNTIME_ONLY` style)."""
        return {k: self.section(cfg)[k] for k in self.runtime_only if k in self.section(cfg)}

    def file_mb(self, cfg: dict, channels: int, locations: int, n_fit: int) -> float:
        """The size in MB of its model file for f(x) of ``channels`` × ``locations`` and ``n_fit`` fitted images."""
        raise NotImplementedError(f"head {self.kind!r} declares no model file size")

    def estimate(self, job: Any) -> tuple[float, float]:
        """(memory in MB, work in seconds) of its ``train`` or ``maps`` job (``job.rule``), from
        :class:`dfr.planning.resources.Job`: the config, f(x)'s channels and locations, the workload, the fitted
        and held-out image counts. Memory includes the job's start-up baseline; the caller adds headroom."""
        raise NotImplementedError(f"head {self.kind!r} declares no resources")

    # ---- the model (imports torch) ----

    def fit(self, features: str, split_json: str, out_model: str, out_history: str, params: dict,
            pca_json: str | None = None, out_info: str | None = None) -> dict:
        """Fit on the training images' cached features; write the sealed checkpoint (``kind`` in it), the
        history (a row per epoch) and the sidecar model.json; return a summary."""
        raise NotImplementedError

    def from_checkpoint(self, ckpt: dict):
        """The model of a checkpoint dict, an ``nn.Module`` whose ``anomaly_map(f)`` is A(x) [N, H, W] for
        f(x) [N, C, H, W]; raise KeyError or RuntimeError for a checkpoint that does not fit."""
        raise NotImplementedError


def section_schema(module_file: str) -> dict:
    """The JSON schema of a head's config section from the ``schema.yaml`` beside its module."""
    path = Path(module_file).resolve().with_name("schema.yaml")
    try:
        node = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DFRError(f"{path}: a head's config section schema, unreadable ({e})") from None
    if not isinstance(node, dict) or node.get("type") != "object":
        raise DFRError(f"{path}: a head's config section schema is an object schema (type: object)")
    return node


# ---- the registry ----

_REGISTERED: dict[str, Head] = {}
_FOUND: dict[str, Head] | None = None
_GENERATION = [0]


def _check(head: Any, where: str) -> Head:
    if not isinstance(head, Head) or not head.kind or not head.kind.isidentifier():
        raise DFRError(f"{where}: a head is an instance of dfr.planning.heads.Head with a kind that is a name, "
                       f"got {head!r}")
    return head


def _discover() -> dict[str, Head]:
    """The shipped heads (every sub-package of dfr.heads with a HEAD), then the installed plugins."""
    global _FOUND
    if _FOUND is None:
        found: dict[str, Head] = {}
        package = importlib.import_module("dfr.heads")
        for m in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if m.ispkg:
                mod = importlib.import_module(f"dfr.heads.{m.name}")
                if hasattr(mod, "HEAD"):
                    head = _check(mod.HEAD, mod.__name__)
                    found[head.kind] = head
        from importlib import metadata

        for ep in sorted(metadata.entry_points(group="dfr.heads"), key=lambda e: e.name):
            try:
                head = _check(ep.load(), f"entry point dfr.heads: {ep.name} = {ep.value}")
            except DFRError:
                raise
            except Exception as e:  # noqa: BLE001 - a broken plugin is named, not a traceback
                raise DFRError(f"entry point dfr.heads: {ep.name} = {ep.value} does not load "
                               f"({type(e).__name__}: {e})") from None
            if head.kind in found:
                raise DFRError(f"entry point dfr.heads: {ep.name} = {ep.value}: kind {head.kind!r} is taken")
            found[head.kind] = head
        _FOUND = found
    return _FOUND


def register(head: Head) -> Head:
    """Add a head in this process (a test's, a notebook's); returns it. Its kind must be new."""
    _check(head, "dfr.planning.heads.register")
    if head.kind in _discover() or _REGISTERED.get(head.kind, head) is not head:
        raise DFRError(f"a head of kind {head.kind!r} is already registered")
    _REGISTERED[head.kind] = head
    _GENERATION[0] += 1
    return head


def unregister(kind: str) -> None:
    """Remove a head that :func:`register` added."""
    if _REGISTERED.pop(kind, None) is not None:
        _GENERATION[0] += 1


def generation() -> int:
    """Changes whenever :func:`register` or :func:`unregister` changes the set (for caches built from it)."""
    return _GENERATION[0]


def all_heads() -> dict[str, Head]:
    """kind -> head: the shipped ones, the plugins, then the registered ones."""
    return {**_discover(), **_REGISTERED}


def kinds() -> list[str]:
    return list(all_heads())


def get(kind: str, where: str = "model") -> Head:
    """The head of a kind; an unknown kind is an error that names the known ones."""
    heads = all_heads()
    if kind not in heads:
        raise DFRError(f"{where}: no head of kind {kind!r}; the heads are {', '.join(heads)}")
    return heads[kind]
