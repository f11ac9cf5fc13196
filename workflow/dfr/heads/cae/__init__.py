"""The paper's head: the 1×1 convolutional autoencoder of §3.3 (its model in :mod:`dfr.heads.cae.model`).

Planning side, torch-free: its config section (``cae:``, ``schema.yaml`` beside this file), its params and key,
its use of PCA's d (``latent_dim: auto``), what the held-out images choose (``checkpoint: best_val``,
``early_stopping``) and the resources of its training and maps jobs.
"""

from __future__ import annotations

import json
from pathlib import Path

from dfr.io import DFRError
from dfr.planning import resources
from dfr.planning.heads import MB, Head, section_schema

# The CAE's training step per image (forward, backward, Adam), fitted to in-process timings of 12 (C, d, h·w)
# points on this project's machine (C 152-1536, d 34-384, h·w 784-12544; docs/benchmark.md, "Declared
# runtimes"): its convolutions at CAE_GFLOPS plus the activations it moves at CAE_ACT_MB_S. Measured/fitted
# 0.8-1.4 for grids up to 56x56; a 112x112 grid ran 1.8x the fit (its batch's activations outgrow the caches).
CAE_GFLOPS = 116.0
CAE_ACT_MB_S = 620.0
# A training job's epochs take longer than those timed steps (the held-out images' loss, the early-stopping
# copies, assembling batches): the median job/estimate ratio of the MVTec-shaped rehearsal's 15 trainings
CAE_JOB_FACTOR = 1.4


def cae_gflop(c: int, d: int, hw: int, kernel: int = 1, depthwise: bool = False) -> float:
    """Forward FLOPs of one image through the CAE's convolutions (1×1, or k×k, or depthwise k×k + 1×1)."""
    mid = (c + 2 * d) // 2
    dense = 2 * hw * (c * mid + mid * 2 * d + 2 * d * d) * 2 / 1e9
    if kernel == 1:
        return dense
    if depthwise:
        return dense + 2 * hw * kernel ** 2 * (c + mid + 2 * d + d + 2 * d + mid) / 1e9
    return dense * kernel ** 2


class CAEHead(Head):
    kind = "cae"
    title = "the paper's DFR: a 1x1 convolutional autoencoder, A(x) its reconstruction error"
    schema = section_schema(__file__)
    version = 1
    # tests/test_golden.py: the digests of the stage's fixed tiny input and of its rounded output, per version
    golden = {1: ("0e7195d6279aef7f", "a5ef1c2e1acba51d")}
    runtime_only = ("in_memory",)

    def params(self, cfg: dict) -> dict:
        c = cfg["cae"]
        out = {"latent_dim": c["latent_dim"], "normalize": c["normalize"], "batchnorm": c["batchnorm"],
               "epochs": c["epochs"], "batch_size": c["batch_size"], "lr": c["lr"],
               "early_stopping": c["early_stopping"], "checkpoint": c["checkpoint"],
               "seed": cfg["seed"] if c["seed"] is None else c["seed"], "kernel": c["kernel"]}
        if c["kernel"] > 1:  # the 1×1 CAE has no spatial padding and no depthwise conv
            out.update(padding=c["padding"], depthwise=c["depthwise"])
        return out  # no kind: a CAE's params and checkpoints predate the other heads

    def key_prefix(self, params: dict) -> str:
        return f"d{params['latent_dim']}-e{params['epochs']}"

    def uses_pca(self, cfg: dict) -> bool:
        return cfg["cae"]["latent_dim"] == "auto"

    def validation_choices(self, cfg: dict) -> list[str]:
        out = []
        if cfg["cae"]["checkpoint"] == "best_val":
            out.append("its checkpoint (cae.checkpoint: best_val)")
        if cfg["cae"]["early_stopping"] > 0:
            out.append("its stopping epoch (cae.early_stopping)")
        return out

    def latent(self, cfg: dict, c: int, dataset: str | None = None, category: str | None = None) -> int:
        """d: the configured one, or PCA's once its pca.json exists (Snakemake sizes a job when it is ready to
        run, so a training job sees it), else a generous guess (C/4)."""
        d = cfg["cae"]["latent_dim"]
        if d != "auto":
            return int(d)
        if dataset and category:
            from dfr.planning import plan

            try:
                return int(json.loads(Path(plan.paths(cfg, dataset, category)["pca"]).read_text())["latent_dim"])
            except (DFRError, OSError, ValueError, KeyError, TypeError):  # not there yet (or no key to find it by)
                pass
        return max(1, c // 4)

    def step_s(self, cfg: dict, c: int, d: int, hw: int) -> float:
        """Seconds of one training step per image (forward, backward, Adam) on this project's machine; a forward
        pass alone takes a third."""
        mid = (c + 2 * d) // 2
        act_mb = (2 * c + 2 * mid + 5 * d) * hw * 4 / MB  # every layer's input and output, normalised and activated
        return (3 * cae_gflop(c, d, hw, cfg["cae"]["kernel"], cfg["cae"]["depthwise"]) / CAE_GFLOPS
                + act_mb / CAE_ACT_MB_S)

    def file_mb(self, cfg: dict, channels: int, locations: int, n_fit: int) -> float:
        c, d, kernel = channels, self.latent(cfg, channels), cfg["cae"]["kernel"]
        mid = (c + 2 * d) // 2  # the widths: c → mid → 2d → d → 2d → mid → c
        return 4 * kernel ** 2 * 2 * (c * mid + mid * 2 * d + 2 * d * d) / MB + 1

    def estimate(self, job) -> tuple[float, float]:
        cfg, c, hw, wl = job.cfg, job.channels, job.locations, job.wl
        step = self.step_s(cfg, c, self.latent(cfg, c, job.dataset, job.category), hw)
        if job.rule == "train":  # each epoch: a step per fitted image, the validation loss on the held-out ones
            cache = min(resources.IN_RAM_BYTES, wl.n_train * c * hw * 4) / MB  # in RAM when it fits (cae.in_memory)
            mem = resources.BASE_MB["torch"] + 400 + 2 * cache + cfg["cae"]["batch_size"] * c * hw * 4 * 8 / MB
            held = job.held_out
            return mem, CAE_JOB_FACTOR * cfg["cae"]["epochs"] * ((wl.n_train - held) * step + held * step / 3)
        mem = (resources.BASE_MB["torch"] + cfg["features"]["batch_size"] * c * hw * 4 * 8 / MB
               + (wl.n_train + wl.n_test) * hw * 4 / MB)
        return mem, (wl.n_train + wl.n_test) * step / 3

    def fit(self, features, split_json, out_model, out_history, params, pca_json=None, out_info=None) -> dict:
        from dfr.heads.cae import model

        return model.train(features, split_json, out_model, out_history, params, pca_json=pca_json,
                           out_info=out_info)

    def from_checkpoint(self, ckpt: dict):
        from dfr.heads.cae import model

        return model.from_checkpoint(ckpt)


HEAD = CAEHead()
