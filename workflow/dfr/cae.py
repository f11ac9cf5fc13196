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
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import backbones
from .checkpoint import content_digest, save_sealed
from .cache import FeatureCache
from .io import FORMATS, DFRError, atomic_path, check_format, provenance, read_json, remake_hint, write_model_info

log = logging.getLogger(__name__)

# The code version of the CAE (its architecture, training and A(x)): dfr.keys reads it (without importing
# this module) into the params and keys of what it makes. Bump it when a change alters what is written.
CODE_VERSIONS = {"cae": 1}
# tests/test_golden.py: per version, the digests of the stage's fixed tiny input and of its rounded output
GOLDEN = {"cae": {1: ("0e7195d6279aef7f", "a5ef1c2e1acba51d")}}


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


def channel_stats(cache: FeatureCache, positions: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Channel-wise mean and std over all locations of the given images (streamed; float64 sums)."""
    c = cache.shape[1]
    s1, s2, n = np.zeros(c), np.zeros(c), 0
    for start in range(0, len(positions), batch):
        x = cache.read(positions[start:start + batch])
        s1 += x.sum(axis=(0, 2, 3), dtype=np.float64)
        s2 += np.square(x).sum(axis=(0, 2, 3), dtype=np.float64)
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean ** 2, 0))
    return mean, np.maximum(std, std_floor(std))


STD_FLOOR = 0.1  # relative to the median channel std


def std_floor(std: np.ndarray) -> float:
    """The smallest std a channel is normalised by: a tenth of the median channel's. A channel (nearly)
    constant on the training images, e.g. a ReLU channel that is always 0, then turns a test-time deviation
    of one typical std into 10 standard units, not 10⁶ (as an absolute floor of 1e-6 would)."""
    live = std[std > 0]
    return float(max(STD_FLOOR * np.median(live), 1e-12)) if live.size else 1.0


class FeatureBatches:
    """Batches of cached features as channels-last tensors: from RAM when it fits (or asked), else streamed
    from HDF5 one batch at a time (memory bounded by the batch, whatever the cache's size)."""

    def __init__(self, cache: FeatureCache, positions: np.ndarray, batch_size: int, in_memory: bool):
        self.cache, self.positions, self.batch_size = cache, np.asarray(positions), batch_size
        # held as N×H×W×C so that batches are channels-last without a copy
        self.data = np.ascontiguousarray(cache.read(self.positions).transpose(0, 2, 3, 1)) if in_memory else None

    def __len__(self) -> int:
        return len(self.positions)

    def batches(self, rng: np.random.Generator | None):
        order = rng.permutation(len(self.positions)) if rng is not None else np.arange(len(self.positions))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.data is not None:
                yield torch.from_numpy(self.data[idx]).permute(0, 3, 1, 2)
            else:
                x = torch.from_numpy(self.cache.read(self.positions[idx]))
                yield x.contiguous(memory_format=torch.channels_last)


def _fits_in_ram(cache: FeatureCache, n: int, limit_bytes: float = 2 * 2**30) -> bool:
    c, h, w = cache.shape[1:]
    return n * c * h * w * 4 <= limit_bytes


def train(features: str | Path, split_json: str | Path, out_model: str | Path, out_history: str | Path,
          params: dict, pca_json: str | Path | None = None, out_info: str | Path | None = None) -> dict:
    """Train the CAE on the normal training images; keep the last epoch (``checkpoint: last``) or the one
    with the least validation loss (``best_val``). (:func:`dfr.heads.fit` fits any head.)"""
    seed = int(params["seed"])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = backbones.resolve_device(params.get("device", "auto"), params.get("device_class", "cpu"))
    split = read_json(split_json)
    latent = params["latent_dim"]
    if latent == "auto":
        if pca_json is None:
            raise DFRError("cae.latent_dim is 'auto' but no pca.json was given")
        latent = int(read_json(pca_json)["latent_dim"])
    with FeatureCache(features) as cache:
        tr_pos, va_pos = cache.positions(split["train"]), cache.positions(split["val"])
        in_mem = params.get("in_memory", "auto")
        in_mem = _fits_in_ram(cache, len(tr_pos) + len(va_pos)) if in_mem == "auto" else bool(in_mem)
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


def load_safely(path: str | Path, what: str, device: torch.device | str = "cpu", kind: str | None = None) -> dict:
    """A DFR checkpoint (``torch.save`` of a dict of tensors and plain data), loaded with ``weights_only``: a file
    that would build other objects, and so could run code, is refused unread. Then, in this order: it must be a
    dict, of ``kind``'s format version (``io.FORMATS``) when one is given, and match the checksum sealed in it."""
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise DFRError(f"{path}: {what} not found") from None
    except pickle.UnpicklingError as e:  # what weights_only refuses: a global that is not a tensor's
        why = next((ln.split("error:", 1)[1].strip() for ln in str(e).splitlines() if "Unpickler error:" in ln),
                   type(e).__name__)
        raise DFRError(f"{path}: refused: it holds objects other than tensors and plain data, and loading it "
                       f"could run code ({why[:300]}); this version of DFR writes none such (earlier ones did): "
                       f"remake it with the workflow ({remake_hint(path)})") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a truncated or foreign file
        raise DFRError(f"{path}: not a readable {what}, truncated or corrupt ({type(e).__name__}: {e}); "
                       + remake_hint(path)) from None
    if not isinstance(obj, dict):
        raise DFRError(f"{path}: not a DFR {what}; " + remake_hint(path))
    if kind is not None:  # before the checksum: another version may seal (or not) in another way
        check_format(path, kind, obj.get("format"))
    if "sha256" in obj and content_digest(obj) != obj["sha256"]:
        raise DFRError(f"{path}: {what} is corrupt: its contents do not match the checksum written with them; "
                       + remake_hint(path))
    return obj


def load(path: str | Path, device: torch.device | str = "cpu") -> CAE:
    return from_checkpoint(load_safely(path, "model checkpoint", device, kind="model"), device, path)


def from_checkpoint(ckpt: dict, device: torch.device | str = "cpu", source: str | Path = "checkpoint") -> CAE:
    """The CAE of a checkpoint dict (``model.pt``, or a bundle member's ``model``), in eval mode (:func:`dfr.heads.load`
    reads any head's)."""
    try:
        model = CAE(ckpt["in_channels"], ckpt["latent_dim"], batchnorm=ckpt.get("batchnorm", True),
                    normalize=ckpt["normalize"], **spatial_params(ckpt))
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError) as e:
        raise DFRError(f"{source}: incomplete or mismatched model checkpoint ({e}); "
                       + remake_hint(source)) from None
    return model.to(device).eval()
