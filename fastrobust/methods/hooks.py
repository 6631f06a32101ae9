"""Fused, masked embedding noise for any Hugging Face model, as a removable hook.

``add_embedding_noise(model, sigma)`` makes every training-mode forward of ``model``
see ``e + sigma * z * m`` instead of its word embeddings ``e`` (z ~ N(0, 1) or U(-1, 1),
m the attention mask of that forward), through the fused ``add_noise`` op. It is the
masked and fused counterpart of transformers' NEFTune hook: padding positions get no
noise, and ``sigma_mode="neftune"`` scales by the real length of each sequence.

Mechanics: a forward pre-hook (with kwargs) on the model records the ``attention_mask``
of the current call; a forward hook on ``model.get_input_embeddings()`` adds the noise to
its output when that module is in training mode; a forward hook on the model forgets the
mask after the call. In eval mode the model is untouched. Forwards that pass
``inputs_embeds`` bypass the embedding module and therefore get no noise.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import Tensor, nn

from fastrobust import ops
from fastrobust.errors import FastrobustError
from fastrobust.methods.embeddings import embedding_rms, input_embedding_module, unwrap_model
from fastrobust.methods.noise import SIGMA_MODES, resolve_sigma
from fastrobust.validation import DISTRIBUTIONS

_SEED_MOD = 2**31 - 1
_SEED_STRIDE = 1_640_531_527  # ~ 2**31 / golden ratio: consecutive forwards get distant keys


class EmbeddingNoiseHandle:
    """Returned by :func:`add_embedding_noise`. ``remove()`` (or leaving a ``with`` block)
    detaches the hooks; ``sigma`` is the absolute scale in use (None in neftune mode)."""

    def __init__(self, model: nn.Module, sigma: float, sigma_mode: str, distribution: str, seed: int | None):
        self.model = unwrap_model(model)
        self.embedding = input_embedding_module(model)
        self.sigma_mode = sigma_mode
        self.alpha = float(sigma)
        # the RS-RP method's sigma rule (resolve_sigma): fixed now, except neftune's per forward
        self._rms = embedding_rms(model) if sigma_mode == "relative" else None
        self.sigma: float | None = None
        if sigma_mode != "neftune":
            self.sigma = float(resolve_sigma(sigma, sigma_mode, None, 0, self._rms))
        self.distribution = distribution
        # With a seed, forward k uses the seed tensor mix(seed, k) computed on the device from a
        # call counter: reproducible without touching torch's global RNG (and dropout's draws),
        # with no host read, so torch.compile traces it and CUDA graphs advance it per replay.
        self._seed = seed
        self._counter: Tensor | None = None
        self._mask: Tensor | None = None
        try:
            self._mask_arg = list(inspect.signature(self.model.forward).parameters).index("attention_mask")
        except (TypeError, ValueError):
            self._mask_arg = None
        self._handles = [
            self.model.register_forward_pre_hook(self._capture_mask, with_kwargs=True),
            self.model.register_forward_hook(self._forget_mask, always_call=True),
            self.embedding.register_forward_hook(self._add_noise),
        ]

    def _capture_mask(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and self._mask_arg is not None and len(args) > self._mask_arg:
            mask = args[self._mask_arg]
        self._mask = mask if isinstance(mask, Tensor) else None

    def _forget_mask(self, *_: Any) -> None:
        self._mask = None

    def _add_noise(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        if not module.training or not isinstance(output, Tensor) or output.dim() != 3:
            return None
        mask = self._mask
        if mask is not None and tuple(mask.shape) != tuple(output.shape[:2]):
            mask = None  # not this forward's mask (e.g. a cached or 4-d mask): noise everywhere
        if self.sigma_mode == "neftune":
            ref = mask if mask is not None else torch.ones(output.shape[:2], device=output.device)
            sigma: float | Tensor = resolve_sigma(
                self.alpha, "neftune", ref.to(output.device), output.shape[-1], None
            )
        else:
            sigma = self.sigma
            if sigma == 0:
                return None
        seed = self._next_seed(output)
        return ops.add_noise(output, sigma, seed=seed, distribution=self.distribution, mask=mask)

    def _next_seed(self, like: Tensor) -> Tensor | None:
        """None (torch's generator) without a seed; else seed_k = (s + k * A) mod P for the
        k-th noisy forward (P = 2**31 - 1, A invertible mod P, so k -> seed_k is one to one)."""
        if self._seed is None:
            return None
        if self._counter is None or self._counter.device != like.device:
            self._counter = torch.zeros((), dtype=torch.int64, device=like.device)
        seed = torch.remainder(self._counter * _SEED_STRIDE + self._seed % _SEED_MOD, _SEED_MOD)
        self._counter.add_(1)
        return seed

    def remove(self) -> None:
        """Detaches the hooks; the model behaves as before. Idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._mask = None

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> EmbeddingNoiseHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def add_embedding_noise(
    model: nn.Module,
    sigma: float,
    *,
    sigma_mode: str = "absolute",
    distribution: str = "gaussian",
    seed: int | None = None,
) -> EmbeddingNoiseHandle:
    """Adds fused, masked noise to the input embeddings of ``model`` in training mode.

    In every training-mode forward, the word embeddings e (B, L, H) become
    ``e + s * z * m``: z ~ N(0, 1) (``gaussian``) or U(-1, 1) (``uniform``), m (B, L) the
    attention mask passed to that forward (no mask: every position), and s = sigma
    (``absolute``), sigma * RMS of the embedding table (``relative``, measured now), or
    sigma / sqrt(L_b * H) per example with L_b the real length (``neftune``).
    ``seed`` makes the noise stream reproducible independently of torch's global RNG (the
    k-th noisy forward uses a seed derived on the device from (seed, k)); without it each
    forward draws its seed from torch's default generator on the embeddings' device.
    Nothing reads a device value on the host, so ``torch.compile(model, fullgraph=True)``
    traces the hooks and the fused op without a graph break.

    model: an HF model (or a DeepSpeed engine around one). Returns a handle; call
    ``handle.remove()`` to take the noise off, or use it as a context manager::

        handle = add_embedding_noise(model, 0.5, sigma_mode="relative")
        ...train...
        handle.remove()
    """
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, (int, float))
        or not math.isfinite(sigma)
        or sigma < 0
    ):
        raise FastrobustError(f"sigma: must be a finite number >= 0, got {sigma!r}")
    if sigma_mode not in SIGMA_MODES:
        raise FastrobustError(f"sigma_mode: must be one of {SIGMA_MODES}, got {sigma_mode!r}")
    if distribution not in DISTRIBUTIONS:
        raise FastrobustError(f"distribution: must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise FastrobustError(f"seed: must be None or an integer >= 0, got {seed!r}")
    return EmbeddingNoiseHandle(model, sigma, sigma_mode, distribution, seed)
