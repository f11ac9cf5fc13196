"""Export a bundle (single model or ensemble) as one TorchScript graph: backbone through A(x) and s(x).

``dfr export bundle.pt --out model.ts`` traces what :class:`dfr.predict.Predictor` runs: each feature
setting's backbone, hooks and fusion, f(x) rounded to the cache's dtype, each member's A(x), the ensemble's
z-score fusion at its grid, the border, and top-k. The graph takes one preprocessed batch per distinct input
(image size and normalisation, in the order of ``dfr.json``'s ``inputs``) at the traced batch-free shape
[N, 3, S, S] and returns ``(A, s)``: A(x) [N, h, w] and s(x) [N]. The file carries ``dfr.json`` (an extra file
of the archive: the inputs, the thresholds, T_pixel, top-k and the bundle's provenance), so it can be served
without this package (``torch.jit.load(path, _extra_files={"dfr.json": ""})``). A TorchScript archive holds
TorchScript code and tensors, not pickled Python objects. Bundles made with autocast (features.amp) are
refused: a traced graph fixes one dtype.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn as nn

from dfr.stages.ensemble import zfuse
from dfr.stages.features import to_cache_dtype
from dfr.io import DFRError, atomic_path
from dfr.stages.predict import Predictor, load_bundle
from dfr.stages.scoring import replicate_border, top_k_mean

log = logging.getLogger(__name__)


class Graph(nn.Module):
    """The bundle's computation as one module: ``forward(*xs) -> (A, s)``."""

    def __init__(self, pred: Predictor):
        super().__init__()
        self.extractors = nn.ModuleList([e for _, e, _, _ in pred.sets])
        self.set_input = [i for i, _, _, _ in pred.sets]
        self.dtypes = [dtype for _, _, _, dtype in pred.sets]
        self.models = nn.ModuleList([m for _, m, _ in pred.members])
        self.member_set = [s for s, _, _ in pred.members]
        self.stats = [st for _, _, st in pred.members]
        self.grid = tuple(pred.fusion["grid"]) if pred.fusion else None
        self.top_k, self.border = pred.top_k, pred.border

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fx = []
        for extractor, i, dtype in zip(self.extractors, self.set_input, self.dtypes):
            f = extractor(xs[i].contiguous(memory_format=torch.channels_last))
            fx.append(to_cache_dtype(f, dtype).float().contiguous(memory_format=torch.channels_last))
        maps = [m.anomaly_map(fx[s]).float() for m, s in zip(self.models, self.member_set)]
        a = maps[0] if self.grid is None else zfuse(maps, self.stats, self.grid)
        a = replicate_border(a, self.border)
        return a, top_k_mean(a, self.top_k, self.border)


def export(bundle_path: str | Path, out: str | Path, batch: int = 1) -> dict:
    """Trace the bundle's graph on a batch of ``batch`` images and save it with its ``dfr.json``."""
    b = load_bundle(bundle_path)
    if any(fs["features"].get("amp", "none") != "none" for fs in b["feature_sets"]):
        raise DFRError(f"{bundle_path}: made with autocast (features.amp); export takes fp32 feature settings")
    pred = Predictor(b, "cpu")
    graph = Graph(pred).eval()
    xs = tuple(torch.rand(batch, 3, p.image_size, p.image_size) for p in pred.inputs)
    with torch.no_grad():
        traced = torch.jit.trace(graph, xs, check_trace=False)
    meta = {"format": 1, "inputs": [{"image_size": p.image_size, "normalize": p.normalize} for p in pred.inputs],
            "outputs": ["A [N, h, w]", "s [N]"], "thresholds": b["thresholds"], "t_pixel": b.get("t_pixel"),
            "scoring": b["scoring"], "provenance": b["provenance"], "bundle": str(bundle_path)}
    with atomic_path(out, suffix=".ts") as tmp:
        traced.save(str(tmp), _extra_files={"dfr.json": json.dumps(meta, default=str)})
    log.info("wrote %s: %d member(s), inputs %s", out, len(pred.members), meta["inputs"])
    return meta


def load(path: str | Path) -> tuple[torch.jit.ScriptModule, dict]:
    """An exported graph and its ``dfr.json``."""
    extra = {"dfr.json": ""}
    try:
        graph = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as e:
        raise DFRError(f"{path}: not a readable exported DFR graph ({type(e).__name__}: {str(e)[:200]})") from None
    if not extra["dfr.json"]:
        raise DFRError(f"{path}: a TorchScript file without dfr.json: not exported by dfr export")
    return graph, json.loads(extra["dfr.json"])
