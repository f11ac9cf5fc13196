"""A PatchCore-style memory bank of training patches (its model in :mod:`dfr.heads.memory_bank.model`):
planning side, torch-free."""

from __future__ import annotations

import math

from dfr.planning import resources
from dfr.planning.heads import MB, Head, section_schema


class MemoryBankHead(Head):
    kind = "memory_bank"
    title = "a coreset of training patches (PatchCore-style), A(x) the distance to the nearest"
    schema = section_schema(__file__)
    version = 1
    golden = {1: ("a698e44fbd259846", "460340275c855d61")}

    def key_prefix(self, params: dict) -> str:
        return f"mb{params['coreset']:g}"

    def bank_size(self, cfg: dict, locations: int, n_fit: int) -> tuple[int, int]:
        """(training patches, patches kept) of ``n_fit`` fitted images."""
        patches = max(1, n_fit) * locations
        f = cfg["memory_bank"]["coreset"]
        return patches, patches if f >= 1 else max(1, math.ceil(f * patches))

    def file_mb(self, cfg: dict, channels: int, locations: int, n_fit: int) -> float:
        return self.bank_size(cfg, locations, n_fit)[1] * (channels + 1) * 4 / MB + 1

    def estimate(self, job) -> tuple[float, float]:
        cfg, c, hw, wl = job.cfg, job.channels, job.locations, job.wl
        patches, kept = self.bank_size(cfg, hw, job.n_fit)
        dim, bank_mb = min(cfg["memory_bank"]["projection"], c), self.file_mb(cfg, c, hw, job.n_fit)
        batch_mb = resources.READ_BATCH * c * hw * 4 / MB  # a batch of images read from the cache
        if job.rule == "train":  # the projected patches, their norms and distances; the bank, and a copy to save
            mem = resources.BASE_MB["torch"] + patches * (dim + 2) * 4 / MB + 3 * batch_mb + 2 * bank_mb
            seconds = (2 * patches * c * dim / (resources.CPU_GFLOPS * 1e9)  # the projection
                       + kept * patches * dim * 4 / (resources.MEM_GBPS * 1e9))  # the greedy loop reads them a step
            return mem, seconds
        # the bank, a 4096 x kept distance matrix, a batch, and every map
        mem = (resources.BASE_MB["torch"] + 2 * bank_mb + 2 * 4096 * kept * 4 / MB + 4 * batch_mb
               + (wl.n_train + wl.n_test) * hw * 4 / MB)
        return mem, (wl.n_train + wl.n_test) * hw * kept * c * 2 / (resources.CPU_GFLOPS * 1e9)

    def fit(self, features, split_json, out_model, out_history, params, pca_json=None, out_info=None) -> dict:
        from dfr.heads.memory_bank import model

        return model.fit(features, split_json, out_model, out_history, params, out_info)

    def from_checkpoint(self, ckpt: dict):
        from dfr.heads.memory_bank import model

        return model.from_checkpoint(ckpt)


HEAD = MemoryBankHead()
