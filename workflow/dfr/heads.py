"""The models on f(x), one face for all: ``fit`` from the cached features, ``load`` a checkpoint, and a module
whose ``anomaly_map(f)`` is A(x) [N, H, W].

=================  ===============================================================================
``model``          head
=================  ===============================================================================
``cae``            the paper's 1×1 convolutional autoencoder (:mod:`dfr.cae`): A(x) its reconstruction error
``gaussian``       a Gaussian per location, PaDiM-style (:mod:`dfr.gaussian`): the Mahalanobis distance
``memory_bank``    PatchCore-style nearest neighbours in a coreset of training patches (:mod:`dfr.memory_bank`)
``flow``           a normalizing flow (affine couplings), FastFlow-style (:mod:`dfr.flow`): the NLL per location
=================  ===============================================================================

A head's module holds its fit, its ``anomaly_map`` and its checkpoint's reading (``from_checkpoint``); its
config section (named as the head) and the params and key made from it are planned by :mod:`dfr.keys`, its
resources by :mod:`dfr.resources`. The rules, maps, ensembles, bundles, ``dfr predict`` and ``dfr export``
go through this module and know no head by name.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import cae, flow, gaussian, memory_bank
from .io import DFRError, remake_hint

HEADS = {"cae": cae, "gaussian": gaussian, "memory_bank": memory_bank, "flow": flow}


def fit(features: str | Path, split_json: str | Path, out_model: str | Path, out_history: str | Path,
        params: dict, pca_json: str | Path | None = None, out_info: str | Path | None = None) -> dict:
    """Fit the head that ``params["kind"]`` names (the CAE when absent) on the training images' features."""
    kind = params.get("kind", "cae")
    if kind == "cae":
        return cae.train(features, split_json, out_model, out_history, params, pca_json=pca_json, out_info=out_info)
    if kind not in HEADS:
        raise DFRError(f"no model {kind!r}; the models are {', '.join(HEADS)}")
    return HEADS[kind].fit(features, split_json, out_model, out_history, params, out_info)


def from_checkpoint(ckpt: dict, device: torch.device | str = "cpu", source: str | Path = "checkpoint"):
    """The head of a checkpoint dict (``model.pt``, or a bundle member's ``model``), in eval mode."""
    kind = ckpt.get("kind", "cae")  # a CAE's checkpoint names no kind
    if kind == "cae":
        return cae.from_checkpoint(ckpt, device, source)
    if kind not in HEADS:
        raise DFRError(f"{source}: a model of kind {kind!r}, which this version of DFR does not know; "
                       + remake_hint(source))
    try:
        return HEADS[kind].from_checkpoint(ckpt).to(device).eval()
    except (KeyError, RuntimeError) as e:
        raise DFRError(f"{source}: incomplete or mismatched {kind} checkpoint ({e}); " + remake_hint(source)) from None


def load(path: str | Path, device: torch.device | str = "cpu"):
    """The head in a ``model.pt`` (checked: safe to load, of this format, its seal intact)."""
    return from_checkpoint(cae.load_safely(path, "model checkpoint", device, kind="model"), device, path)
