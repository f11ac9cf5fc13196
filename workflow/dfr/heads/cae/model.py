"""The 1×1 convolutional autoencoder of §3.3, trained on normal features only from the HDF5 cache.

Shape (as in the DFR reference implementation): C → (C+2d)/2 → 2d → d → 2d → (C+2d)/2 → C, 1×1 convs with
BatchNorm + ReLU after every conv except the latent code and the output.

Beyond the paper (§8.4, §9: the 1×1 CAE ignores spatial context), ``kernel: 3`` makes every conv 3×3, or with
``depthwise`` a depthwise 3×3 followed by the 1×1 (far fewer weights). Their padding is ``reflect`` by
default: zero padding would make the feature map's border look unlike its interior to the CAE, and so raise
A(x) along the image edges; reflection continues the features instead.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from dfr import compute
from dfr.checkpoint import save_sealed
from dfr.heads.common import FeatureBatches, channel_stats, fits_in_ram
from dfr.io import FORMATS, DFRError, atomic_path, provenance, read_json, write_model_info
from dfr.stages.cache import FeatureCache

log = logging.getLogger(__name__)



def _block(cin: int, cout: int, act: bool, bn: bool, kernel: int = 1, padding: str = "reflect",
           depthwise: bool = False) -> list[nn.Module]:
    if kernel == 1:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size=1)]
    elif depthwise:  # spatial context per channel, then the channel mixing of the 1×1
        layers = [nn.Conv2d(cin, cin, kernel, padding=kernel // 2, padding_mode=padding, groups=cin),
                  nn.Conv2d(cin, cout, kernel_size=1)]
    else:
        layers = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, padding_mode=padding)]
    if act:
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    return layers


class CAE(nn.Module):
    """f̂(x) = CAE(f(x)), with optional channel-wise normalisation undone at the output."""

    def __init__(self, in_channels: int, latent_dim: int, batchnorm: bool = True, normalize: bool = False,
                 kernel: int = 1, padding: str = "reflect", depthwise: bool = False):
        super().__init__()
        if latent_dim < 1:
            raise DFRError(f"latent dimension must be >= 1, got {latent_dim}")
        if kernel < 1 or kernel % 2 == 0:
            raise DFRError(f"CAE kernel must be odd and >= 1, got {kernel}")
        c, d = in_channels, latent_dim
        mid = (c + 2 * d) // 2
        self.in_channels, self.latent_dim, self.normalize = c, d, normalize
        self.kernel, self.padding, self.depthwise = kernel, padding, depthwise and kernel > 1
        spatial = {"kernel": kernel, "padding": padding, "depthwise": self.depthwise}
        self.encoder = nn.Sequential(*_block(c, mid, True, batchnorm, **spatial),
                                     *_block(mid, 2 * d, True, batchnorm, **spatial),
                                     *_block(2 * d, d, False, batchnorm, **spatial))
        self.decoder = nn.Sequential(*_block(d, 2 * d, True, batchnorm, **spatial),
                                     *_block(2 * d, mid, True, batchnorm, **spatial),
                                     *_block(mid, c, False, batchnorm, **spatial))
        self.register_buffer("mean", torch.zeros(1, c, 1, 1))
        self.register_buffer("std", torch.ones(1, c, 1, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """f̂(x). The 1×1 convolutions run as matrix products over all locations (rows = N·H·W), which
        is exactly a 1×1 convolution and BatchNorm2d, at GEMM speed; the output is an NCHW tensor in
        channels-last layout. A spatial CAE (kernel > 1) runs its convolutions as such."""
        if self.kernel > 1:
            x = (f - self.mean) / self.std if self.normalize else f
            x = self.decoder(self.encoder(x))
            return x * self.std + self.mean if self.normalize else x
        n, c, h, w = f.shape
        x = f.permute(0, 2, 3, 1).reshape(-1, c)  # a view when f is channels-last
        layers = (*self.encoder, *self.decoder)
        first, last = layers[0], layers[-1]
        for layer in layers:
            if isinstance(layer, nn.Conv2d):
                weight = layer.weight.view(layer.out_channels, layer.in_channels)
                bias = layer.bias
                if self.normalize and layer is first:
                    # W((x - μ)/σ) + b = (W/σ)x + (b − (W/σ)μ): normalisation folded into the first GEMM
                    inv = 1.0 / self.std.view(1, -1)
                    weight = weight * inv
                    bias = bias - weight @ self.mean.view(-1)
                if self.normalize and layer is last:
                    # σ(Wh + b) + μ: the inverse normalisation folded into the last GEMM
                    weight = weight * self.std.view(-1, 1)
                    bias = bias * self.std.view(-1) + self.mean.view(-1)
                x = F.linear(x, weight, bias)
            elif isinstance(layer, nn.BatchNorm2d):
                if self.training:
                    layer.num_batches_tracked.add_(1)
                x = F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias,
                                 self.training, layer.momentum, layer.eps)
            else:
                x = layer(x)
        return x.view(n, h, w, c).permute(0, 3, 1, 2)

    def anomaly_map(self, f: torch.Tensor) -> torch.Tensor:
        """A(x) [N, H, W]: the per-location L2 reconstruction error."""
        return error_map(f, self(f))


SPATIAL_DEFAULTS = {"kernel": 1, "padding": "reflect", "depthwise": False}


def spatial_params(params: dict) -> dict:
    """The CAE's kernel, padding and depthwise setting (the paper's 1×1 CAE when absent)."""
    return {k: params.get(k, v) for k, v in SPATIAL_DEFAULTS.items()}


def reconstruction_loss(f: torch.Tensor, f_hat: torch.Tensor) -> torch.Tensor:
    """Eq. (1), averaged over the batch: mean over locations of ||f_ij − f̂_ij||²."""
    return (f - f_hat).pow(2).sum(dim=1).mean()


def error_map(f: torch.Tensor, f_hat: torch.Tensor) -> torch.Tensor:
    """A(x): per-location L2 error, shape [N, H, W]."""
    return (f - f_hat).pow(2).sum(dim=1).sqrt()


def train(features: str | Path, split_json: str | Path, out_model: str | Path, out_history: str | Path,
          params: dict, pca_json: str | Path | None = None, out_info: str | Path | None = None) -> dict:
    """Train the CAE on the normal training images; keep the last epoch (``checkpoint: last``) or the one
    with the least validation loss (``best_val``). (:func:`dfr.heads.fit` fits any head.)"""
    seed = int(params["seed"])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = compute.resolve_device(params.get("device", "auto"), params.get("device_class", "cpu"))
    split = read_json(split_json)
    latent = params["latent_dim"]
    if latent == "auto":
        if pca_json is None:
            raise DFRError("cae.latent_dim is 'auto' but no pca.json was given")
        latent = int(read_json(pca_json)["latent_dim"])
    with FeatureCache(features) as cache:
        tr_pos, va_pos = cache.positions(split["train"]), cache.positions(split["val"])
        in_mem = params.get("in_memory", "auto")
        in_mem = fits_in_ram(cache, len(tr_pos) + len(va_pos)) if in_mem == "auto" else bool(in_mem)
        model = CAE(cache.shape[1], int(latent), batchnorm=params.get("batchnorm", True),
                    normalize=params["normalize"], **spatial_params(params))
        if params["normalize"]:
            mean, std = channel_stats(cache, tr_pos)
            model.mean.copy_(torch.from_numpy(mean).float().view(1, -1, 1, 1))
            model.std.copy_(torch.from_numpy(std).float().view(1, -1, 1, 1))
        model.to(device)
        opt = torch.optim.Adam(model.parameters(), lr=params["lr"])
        train_b = FeatureBatches(cache, tr_pos, params["batch_size"], in_mem)
        val_b = FeatureBatches(cache, va_pos, params["batch_size"], in_mem)
        history, best, best_state, stale = [], float("inf"), None, 0
        patience = int(params.get("early_stopping", 0) or 0)
        # "last" keeps the final epoch: the held-out normals then serve the thresholds alone (unbiased);
        # "best_val" keeps the epoch of least validation loss, chosen on the same images the thresholds use
        checkpoint = params.get("checkpoint", "last")
        keep_best = checkpoint == "best_val"
        log.info("CAE %d -> %d (%s), %d train / %d val images, %d epochs, %s",
                 cache.shape[1], latent, device, len(train_b), len(val_b), params["epochs"],
                 "in RAM" if in_mem else "streamed from HDF5")
        for epoch in range(1, params["epochs"] + 1):
            t0 = time.perf_counter()
            model.train()
            tot, n = 0.0, 0
            for x in train_b.batches(rng):
                x = x.to(device, non_blocking=True)
                loss = reconstruction_loss(x, model(x))
                if not torch.isfinite(loss):
                    raise DFRError(f"{features}: stage train diverged in epoch {epoch} (loss {loss.item()}); "
                                   f"try a lower cae.lr (now {params['lr']:g}), cae.normalize: true, or check "
                                   "the features of this category")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += loss.item() * len(x)
                n += len(x)
            train_loss = tot / n
            val_loss = evaluate(model, val_b, device) if len(val_b) else float("nan")
            monitored = val_loss if len(val_b) else train_loss
            improved = monitored < best
            if improved:
                best, stale, best_epoch = monitored, 0, epoch
                if keep_best:
                    best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            history.append(dict(epoch=epoch, train_loss=train_loss, val_loss=val_loss,
                                seconds=time.perf_counter() - t0, best=improved))
            log.info("epoch %3d  train %.5f  val %.5f%s", epoch, train_loss, val_loss, "  *" if improved else "")
            if patience and stale >= patience:
                log.info("early stopping: no improvement for %d epochs", patience)
                break
    if keep_best:
        model.load_state_dict(best_state)
    saved_epoch = best_epoch if keep_best else history[-1]["epoch"]
    ckpt = {
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "in_channels": model.in_channels, "latent_dim": model.latent_dim, "normalize": model.normalize,
        "batchnorm": params.get("batchnorm", True), **spatial_params(params), "best_epoch": best_epoch,
        "best_loss": best,
        "checkpoint": checkpoint, "epoch": saved_epoch, "format": FORMATS["model"],
        **provenance(params),
    }
    with atomic_path(out_model, suffix=".pt") as tmp:
        save_sealed(ckpt, tmp)
    with atomic_path(out_history, suffix=".csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    write_model_info(out_info, out_model, kind="cae", latent_dim=int(latent), epochs_run=len(history),
               epoch_saved=int(saved_epoch), parameters=int(sum(p.numel() for p in model.parameters())))
    return {"best_epoch": best_epoch, "best_loss": best, "latent_dim": latent, "epoch": saved_epoch}


@torch.no_grad()
def evaluate(model: CAE, batches: FeatureBatches, device: torch.device) -> float:
    model.eval()
    tot, n = 0.0, 0
    for x in batches.batches(None):
        x = x.to(device)
        tot += reconstruction_loss(x, model(x)).item() * len(x)
        n += len(x)
    return tot / max(n, 1)


def from_checkpoint(ckpt: dict) -> CAE:
    """The CAE of a checkpoint dict (``model.pt``, or a bundle member's ``model``), in eval mode; KeyError or
    RuntimeError for one that does not fit (:func:`dfr.heads.from_checkpoint` names the file)."""
    model = CAE(ckpt["in_channels"], ckpt["latent_dim"], batchnorm=ckpt.get("batchnorm", True),
                normalize=ckpt["normalize"], **spatial_params(ckpt))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
