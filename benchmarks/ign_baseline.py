"""The IGN baseline of ``benchmarks/projection.py``: a non-linear Idempotent Generative Network.

Shocher et al. (ICLR 2024) train one network ``f`` to be a projector by three losses, with ``f̄`` a frozen copy of
``f`` (gradients reach ``f`` only through the inner call) and a source ``z`` (noise)::

    L_rec   = D(f(x), x)                                  data are fixed points
    L_idem  = D(f̄(f(z)), f(z))                            f(z) is a fixed point (grad through the inner f)
    L_tight = −D(f(f(z)ᵀ), f(z)ᵀ)  (ᵀ: stop-gradient)     f is not the identity away from the data
    L = λ_rec L_rec + λ_idem L_idem + λ_tight · tanh(L_tight / (a·L_rec)) · a·L_rec

with ``D`` the mean absolute error and the weights of public reimplementations (λ = 20, 20, 2.5; a = 1.5; Adam
1e-4, β = (0.5, 0.999)). The source is Gaussian noise coloured with the data's mean Fourier amplitude (what those
reimplementations draw), plus the data's mean image. The network is a DCGAN-style encoder-decoder for 32×32
grayscale images whose width is chosen so that its parameter count equals the projection model's.

    python benchmarks/ign_baseline.py --params 168233 --max_train_seconds 2400 --output benchmarks/models/ign
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch
from common import count_params
from torch import Tensor, nn

from diffusers_linearizer import write_text_atomic
from diffusers_linearizer.training.data import FashionMNIST

LAMBDA_REC, LAMBDA_IDEM, LAMBDA_TIGHT, TIGHT_CLAMP = 20.0, 20.0, 2.5, 1.5


class IGNNet(nn.Module):
    """conv 32²→16²→8²→4² (width w, 2w, 2w), a 4²·2w → 2w·… bottleneck, and the mirrored transposed convs."""

    def __init__(self, width: int = 24, latent: int = 64):
        super().__init__()
        w = int(width)
        self.config = dict(width=w, latent=latent)
        self.encoder = nn.Sequential(
            nn.Conv2d(1, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 2 * w, 4, 2, 1), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, latent, 4, 1, 0),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(latent, 2 * w, 4, 1, 0), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, 2 * w, 4, 2, 1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.ConvTranspose2d(w, 1, 4, 2, 1), nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x.float() * 2 - 1))


def width_for(params: int, latent: int = 64) -> int:
    """The width whose :class:`IGNNet` has the parameter count nearest to ``params``."""
    return min(range(4, 129), key=lambda w: abs(count_params(IGNNet(w, latent)) - params))


class FourierSource:
    """Noise with the data's mean Fourier amplitude and random phases, plus the data's mean image."""

    def __init__(self, images: Tensor):
        x = images.float()
        self.mean = x.mean(0, keepdim=True)
        self.amplitude = torch.fft.rfft2(x - self.mean).abs().mean(0, keepdim=True)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        white = torch.fft.rfft2(torch.randn((n, *self.mean.shape[1:]), generator=generator))
        coloured = torch.fft.irfft2(white / white.abs().clamp_min(1e-8) * self.amplitude, s=self.mean.shape[-2:])
        return coloured + self.mean


def ign_losses(f: nn.Module, frozen: nn.Module, x: Tensor, z: Tensor):
    """``(loss, terms)`` of one IGN step (module docstring)."""
    frozen.load_state_dict(f.state_dict())
    fx, fz = f(x), f(z)
    f_z = fz.detach()
    ff_z = f(f_z)
    f_fz = frozen(fz)
    rec = (fx - x).abs().mean()
    idem = (f_fz - fz).abs().mean()
    tight = -(ff_z - f_z).abs().mean()
    tight = torch.tanh(tight / (TIGHT_CLAMP * rec)) * TIGHT_CLAMP * rec
    loss = LAMBDA_REC * rec + LAMBDA_IDEM * idem + LAMBDA_TIGHT * tight
    return loss, {"rec": float(rec.detach()), "idem": float(idem.detach()), "tight": float(tight.detach())}


def train(params: int, seconds: float, output: str, batch_size: int = 64, seed: int = 0, resume: bool = False) -> dict:
    """Train an :class:`IGNNet` of about ``params`` parameters for ``seconds`` of wall-clock; save it to ``output``.
    ``resume``: continue the network saved in ``output`` (a fresh optimizer; steps and seconds add up)."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    data = FashionMNIST(split="train", resolution=32)
    images = data.images.float() / 255.0
    source = FourierSource(images[:10000])
    done = {"steps": 0, "seconds": 0.0}
    if resume:
        f, _ = load(output)
        f.train()
        with open(os.path.join(output, "ign.json"), encoding="utf-8") as fh:
            done = json.load(fh)
    else:
        f = IGNNet(width_for(params))
    frozen = copy.deepcopy(f).requires_grad_(False)
    opt = torch.optim.Adam(f.parameters(), lr=1e-4, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(seed + done["steps"])
    start, step, terms = time.monotonic(), 0, {}
    while time.monotonic() - start < seconds:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        loss, terms = ign_losses(f, frozen, images[idx], source.sample(batch_size, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0:
            print(f"step {step} ({time.monotonic() - start:.0f} s): loss {float(loss):.4f} {terms}", flush=True)
    os.makedirs(output, exist_ok=True)
    save_file({k: v.contiguous() for k, v in f.state_dict().items()}, os.path.join(output, "ign.safetensors"))
    save_file({"mean": source.mean.contiguous(), "amplitude": source.amplitude.contiguous()},
              os.path.join(output, "source.safetensors"))
    summary = dict(f.config, parameters=count_params(f), steps=done["steps"] + step,
                   seconds=round(done["seconds"] + time.monotonic() - start, 1),
                   batch_size=batch_size, last_terms=terms)
    write_text_atomic(os.path.join(output, "ign.json"), json.dumps(summary, indent=2) + "\n")
    return summary


def load(output: str):
    """``(f, source)`` saved by :func:`train` (weights as safetensors; the source statistics as tensors only)."""
    from safetensors.torch import load_file

    with open(os.path.join(output, "ign.json"), encoding="utf-8") as fh:
        cfg = json.load(fh)
    f = IGNNet(cfg["width"], cfg["latent"])
    f.load_state_dict(load_file(os.path.join(output, "ign.safetensors")))
    stats = load_file(os.path.join(output, "source.safetensors"))
    source = FourierSource.__new__(FourierSource)
    source.mean, source.amplitude = stats["mean"], stats["amplitude"]
    return f.eval(), source


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=int, required=True, help="Parameter count to match (the projection model's).")
    p.add_argument("--max_train_seconds", type=float, required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="Continue the network saved in --output.")
    args = p.parse_args(argv)
    print(json.dumps(train(args.params, args.max_train_seconds, args.output, args.batch_size, args.seed, args.resume)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
