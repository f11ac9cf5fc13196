"""A Gaussian per location, PaDiM-style (its model in :mod:`dfr.heads.gaussian.model`): planning side, torch-free."""

from __future__ import annotations

from dfr.planning import resources
from dfr.planning.heads import MB, Head, section_schema


class GaussianHead(Head):
    kind = "gaussian"
    title = "a Gaussian per location (PaDiM-style), A(x) the Mahalanobis distance"
    schema = section_schema(__file__)
    version = 1  # covariance: shared is new in its own key value (version 1 unchanged)
    golden = {1: ("a698e44fbd259846", "025495c1f1fd7dd3")}
    later_defaults = {"covariance": "location"}

    def key_prefix(self, params: dict) -> str:
        return f"gauss-c{params['channels'] or 'all'}"

    @staticmethod
    def covariances(cfg: dict, locations: int) -> int:
        """How many covariances it holds: one per location, or one shared."""
        return 1 if cfg["gaussian"].get("covariance") == "shared" else locations

    def file_mb(self, cfg: dict, channels: int, locations: int, n_fit: int) -> float:
        k = cfg["gaussian"]["channels"] or channels
        return (locations * k + self.covariances(cfg, locations) * k * k) * 4 / MB

    def estimate(self, job) -> tuple[float, float]:
        cfg, c, hw, wl = job.cfg, job.channels, job.locations, job.wl
        k, ncov = cfg["gaussian"]["channels"] or c, self.covariances(cfg, hw)
        if job.rule == "train":  # the float64 sums Σ x xᵀ, the float32 precisions, a 256 MB chunk being inverted
            model_mb = ncov * k * k * (8 + 4) / MB + 3 * 256  # (dfr.heads.gaussian.model._precision)
        else:  # the float32 precisions as loaded, and a torch.load copy's headroom
            model_mb = ncov * k * k * 4 * 1.5 / MB
        mem = resources.BASE_MB["torch"] + model_mb + cfg["features"]["batch_size"] * c * hw * 4 * 4 / MB
        n = wl.n_train if job.rule == "train" else wl.n_train + wl.n_test
        seconds = n * hw * k * k * 4 / (resources.CPU_GFLOPS * 1e9)
        if job.rule == "train":  # the float64 inverses: LAPACK one matrix at a time, ~a quarter of the GEMM rate
            seconds += hw * 2 * k ** 3 / (resources.CPU_GFLOPS / 4 * 1e9)  # (measured 95 s for 3136 x 550²)
        return mem, seconds

    def fit(self, features, split_json, out_model, out_history, params, pca_json=None, out_info=None) -> dict:
        from dfr.heads.gaussian import model

        return model.fit(features, split_json, out_model, out_history, params, out_info)

    def from_checkpoint(self, ckpt: dict):
        from dfr.heads.gaussian import model

        return model.from_checkpoint(ckpt)


HEAD = GaussianHead()
