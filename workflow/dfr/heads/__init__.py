"""The heads: the models on f(x), one folder each behind one interface (:class:`dfr.planning.heads.Head`).

=================  ===============================================================================
folder             head
=================  ===============================================================================
``cae/``           the paper's 1×1 convolutional autoencoder: A(x) its reconstruction error
``gaussian/``      a Gaussian per location, PaDiM-style: the Mahalanobis distance
``memory_bank/``   PatchCore-style nearest neighbours in a coreset of training patches
``flow/``          a normalizing flow (affine couplings), FastFlow-style: the NLL per location
=================  ===============================================================================

A head's ``__init__`` declares it (``HEAD``: its config section, params, key, resources; no torch) and its
``model`` module holds its fit, its ``anomaly_map`` and its checkpoint's reading; :mod:`dfr.heads.common` holds
what they share. A new head is a new folder (or a plugin: ``docs/heads.md``); nothing else changes. This module
is the model side's entry: the rules' fit, the maps, ensembles, bundles, ``dfr predict`` and ``dfr export`` go
through it and know no head by name. It imports no torch itself (the planning side imports this package).
"""

from __future__ import annotations

from pathlib import Path

from dfr.io import DFRError, remake_hint
from dfr.planning import config, heads


def kind_of(obj: dict) -> str:
    """The head of params or a checkpoint: its ``kind``, else the config's default head (whose params and
    checkpoints predate the other heads and carry none)."""
    return obj.get("kind") or config.default_model()


def fit(features: str | Path, split_json: str | Path, out_model: str | Path, out_history: str | Path,
        params: dict, pca_json: str | Path | None = None, out_info: str | Path | None = None) -> dict:
    """Fit the head that ``params`` name on the training images' cached features."""
    return heads.get(kind_of(params), "params").fit(features, split_json, out_model, out_history, params,
                                                     pca_json=pca_json, out_info=out_info)


def from_checkpoint(ckpt: dict, device="cpu", source: str | Path = "checkpoint"):
    """The head of a checkpoint dict (``model.pt``, or a bundle member's ``model``), on ``device``, in eval mode."""
    kind = kind_of(ckpt)
    if kind not in heads.kinds():
        raise DFRError(f"{source}: a model of kind {kind!r}, which this version of DFR does not know (its heads: "
                       f"{', '.join(heads.kinds())}); " + remake_hint(source))
    try:
        return heads.get(kind).from_checkpoint(ckpt).to(device).eval()
    except (KeyError, RuntimeError, TypeError) as e:
        raise DFRError(f"{source}: incomplete or mismatched {kind} checkpoint ({e}); " + remake_hint(source)) from None


def load(path: str | Path, device="cpu"):
    """The head in a ``model.pt`` (checked: safe to load, of this format, its seal intact)."""
    from dfr.checkpoint import load_safely

    return from_checkpoint(load_safely(path, "model checkpoint", device, kind="model"), device, path)
