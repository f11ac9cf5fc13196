"""A normalizing flow of affine couplings, FastFlow-style (its model in :mod:`dfr.heads.flow.model`): planning
side, torch-free."""

from __future__ import annotations

from dfr.planning import resources
from dfr.planning.heads import MB, Head, section_schema

# The couplings' training (many small ops, the log-determinants) sustains less than a GEMM: measured 9-25 GFLOPS
# for the CAE's older loop, a third of that assumed for the couplings
TRAIN_GFLOPS = 12.0


class FlowHead(Head):
    kind = "flow"
    title = "a normalizing flow of affine couplings (FastFlow-style), A(x) the negative log-likelihood per location"
    schema = section_schema(__file__)
    version = 1
    golden = {1: ("a698e44fbd259846", "341f2dbcedb2259c")}

    def key_prefix(self, params: dict) -> str:
        return f"flow-b{params['blocks']}-e{params['epochs']}"

    def size(self, cfg: dict, channels: int) -> tuple[int, float]:
        """(weights, forward GFLOP per location): each block's two convolutions (dfr.heads.flow.model.Coupling)."""
        fl = cfg["flow"]
        k, h, ks = fl["channels"] or channels, fl["hidden"], fl["kernel"] ** 2
        weights = fl["blocks"] * ((k // 2) * h * ks + h * 2 * (k - k // 2) * ks)
        return weights, 2 * weights / 1e9

    def file_mb(self, cfg: dict, channels: int, locations: int, n_fit: int) -> float:
        return self.size(cfg, channels)[0] * 4 / MB + 1

    def estimate(self, job) -> tuple[float, float]:
        cfg, c, hw, wl = job.cfg, job.channels, job.locations, job.wl
        fl = cfg["flow"]
        k, gflop = fl["channels"] or c, self.size(cfg, c)[1] * hw  # per image, forward
        # every block's input, hidden and output activations (kept for the backward pass when training)
        act_mb = fl["blocks"] * (3 * k + fl["hidden"]) * hw * 4 / MB
        if job.rule == "train":
            cache = min(resources.IN_RAM_BYTES, wl.n_train * c * hw * 4) / MB  # in RAM when it fits
            mem = (resources.BASE_MB["torch"] + 2 * cache + fl["batch_size"] * 3 * act_mb
                   + 4 * self.file_mb(cfg, c, hw, job.n_fit))
            return mem, fl["epochs"] * wl.n_train * 3 * gflop / (TRAIN_GFLOPS / 3)  # its couplings: a third
        mem = (resources.BASE_MB["torch"] + cfg["features"]["batch_size"] * (c * hw * 4 * 2 / MB + act_mb)
               + (wl.n_train + wl.n_test) * hw * 4 / MB)
        return mem, (wl.n_train + wl.n_test) * gflop / resources.CPU_GFLOPS

    def fit(self, features, split_json, out_model, out_history, params, pca_json=None, out_info=None) -> dict:
        from dfr.heads.flow import model

        return model.fit(features, split_json, out_model, out_history, params, out_info)

    def from_checkpoint(self, ckpt: dict):
        from dfr.heads.flow import model

        return model.from_checkpoint(ckpt)


HEAD = FlowHead()
