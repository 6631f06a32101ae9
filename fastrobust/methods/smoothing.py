"""Smoothed prediction and certification in the input-embedding space (Cohen et al. 2019).

The smoothed classifier of a base classifier f is

    g(e) = argmax_c P_z( f(e + sigma * z * m) = c ),   z ~ N(0, I)

with e (L, H) the word embeddings of an input and m its attention mask (noise on real
tokens only). If the top class has probability p_A >= p_lower > 1/2, then g is constant
on the L2 ball of radius ``sigma * Phi^-1(p_lower)`` around e (the ball is over the
real-token entries of e — padding is not an input). Both routines sample f on noisy copies
drawn by the fused ``noisy_copies`` op, ``batch_size`` noisy sequences per forward.

* :func:`smoothed_predict` (Cohen's PREDICT): n samples, top two counts n_A, n_B; return
  the top class if a two-sided binomial test of n_A out of n_A + n_B against p = 1/2 has
  p-value <= alpha, else abstain. The probability of returning a class other than g(e) is
  at most alpha.
* :func:`certify` (Cohen's CERTIFY): guess c_A from n0 samples, count n_A = #{f = c_A} in
  n fresh samples, take the one-sided (1 - alpha) Clopper-Pearson lower bound p_lower of
  p_A; certify radius sigma * Phi^-1(p_lower) if p_lower > 1/2, else abstain. With
  probability >= 1 - alpha a returned radius is valid.

Abstention is reported as class ``ABSTAIN`` (-1) with radius 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fastrobust import ops
from fastrobust.errors import FastrobustError
from fastrobust.methods.embeddings import embed_inputs, forward_from_embeds, unwrap_model

ABSTAIN = -1
_SEED_HIGH = 2**31 - 1


def derive_seed(*keys: int) -> int:
    """A seed in [0, 2**31 - 1] mixed from integer keys (numpy's SeedSequence hash), so that
    streams keyed by different tuples — (seed, chunk), (seed, phase, chunk) — never coincide
    the way ``seed + k`` offsets would."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0]) % _SEED_HIGH


@dataclass
class CertifyResult:
    """Per example (B,): the certified class (or ABSTAIN), the certified L2 radius (0 when
    abstaining), the Clopper-Pearson lower bound p_lower, and the counts (B, C) of the
    n estimation samples."""

    prediction: Tensor
    radius: Tensor
    p_lower: Tensor
    counts: Tensor


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FastrobustError(f"{name}: must be an integer >= 1, got {value!r}")
    return value


def _check_args(sigma: object, alpha: object, batch_size: object) -> None:
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, (int, float))
        or not math.isfinite(sigma)
        or sigma <= 0
    ):
        raise FastrobustError(f"sigma: must be a finite number > 0, got {sigma!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise FastrobustError(f"alpha: must be in (0, 1), got {alpha!r}")
    _check_positive_int("batch_size", batch_size)


@torch.no_grad()
def sample_counts(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    *,
    n: int,
    sigma: float,
    batch_size: int = 256,
    seed: int | None = None,
    embeds: Tensor | None = None,
    offsets: Tensor | None = None,
) -> Tensor:
    """Class counts of the base classifier over n noisy copies of each example.

    batch: input_ids (B, L), attention_mask (B, L), [token_type_ids]. Returns (B, C) int64,
    counts[b, c] = #{i < n : argmax f(e_b + sigma z_i m_b) = c}. Copies are drawn
    ``max(1, batch_size // B)`` at a time with ``noisy_copies`` and flattened to one forward
    of (copies * B) sequences. ``seed`` makes the draw reproducible (chunk k uses
    ``derive_seed(seed, k)``); None draws from torch's default generator. The model is put in
    eval mode (no dropout) for the duration and restored afterwards. ``offsets`` (C,): label-free
    calibration offsets added to the base classifier's logits before each vote
    (:mod:`fastrobust.evaluate.offsets`).
    """
    n = _check_positive_int("n", n)
    _check_args(sigma, 0.5, batch_size)
    hf = unwrap_model(model)
    was_training = hf.training
    hf.eval()
    try:
        if embeds is None:
            embeds = embed_inputs(model, batch)
        mask = batch["attention_mask"]
        rows = embeds.shape[0]
        per_chunk = max(1, batch_size // rows)
        counts = None
        done = 0
        chunk = 0
        while done < n:
            m = min(per_chunk, n - done)
            chunk_seed = None if seed is None else derive_seed(seed, chunk)
            noisy = ops.noisy_copies(embeds, m, sigma, seed=chunk_seed, mask=mask)  # (m, B, L, H)
            logits = forward_from_embeds(model, batch, noisy.reshape(m * rows, *embeds.shape[1:]))
            if offsets is not None:
                logits = logits + offsets.to(device=logits.device, dtype=logits.dtype)
            votes = logits.argmax(dim=-1).view(m, rows)
            if counts is None:
                counts = torch.zeros(rows, logits.shape[-1], dtype=torch.long, device=logits.device)
            counts.scatter_add_(1, votes.t(), torch.ones_like(votes.t()))
            done += m
            chunk += 1
        return counts
    finally:
        hf.train(was_training)


def clopper_pearson_lower(successes: np.ndarray | int, trials: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound of a binomial proportion:
    the alpha quantile of Beta(k, n - k + 1), and 0 when k = 0."""
    from scipy.stats import beta  # scipy.stats (~0.3 s): only when certifying

    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        low = beta.ppf(alpha, k, trials - k + 1)
    return np.where(k > 0, np.nan_to_num(low, nan=0.0), 0.0)


def smoothed_predict(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    *,
    sigma: float,
    n: int = 100,
    alpha: float = 0.001,
    batch_size: int = 256,
    seed: int | None = None,
    offsets: Tensor | None = None,
) -> Tensor:
    """Cohen's PREDICT for each example of the batch: (B,) int64 class ids, ABSTAIN (-1) where
    the top class does not beat the runner-up in a two-sided binomial test at level alpha.

    sigma is absolute (embedding units). Shapes: batch as for :func:`sample_counts`; ``offsets``
    (C,): calibration offsets of the base classifier's logits, as there.
    """
    from scipy.stats import binomtest  # scipy.stats (~0.3 s): only when certifying

    _check_args(sigma, alpha, batch_size)
    counts = sample_counts(
        model, batch, n=n, sigma=sigma, batch_size=batch_size, seed=seed, offsets=offsets
    ).cpu()
    top2 = counts.topk(min(2, counts.shape[1]), dim=1)
    out = torch.full((counts.shape[0],), ABSTAIN, dtype=torch.long)
    for b in range(counts.shape[0]):
        n_a = int(top2.values[b, 0])
        n_b = int(top2.values[b, 1]) if top2.values.shape[1] > 1 else 0
        if binomtest(n_a, n_a + n_b, 0.5).pvalue <= alpha:
            out[b] = int(top2.indices[b, 0])
    return out


def certify(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    *,
    sigma: float,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    batch_size: int = 256,
    seed: int | None = None,
    offsets: Tensor | None = None,
) -> CertifyResult:
    """Cohen's CERTIFY for each example of the batch.

    c_A = argmax of the counts over n0 selection samples; n_A = count of c_A over n independent
    estimation samples; p_lower = Clopper-Pearson one-sided (1 - alpha) lower bound of n_A / n;
    radius = sigma * Phi^-1(p_lower) when p_lower > 1/2, else ABSTAIN with radius 0.
    sigma is absolute (embedding units); radii are L2 over the real-token embedding entries.
    Returns a :class:`CertifyResult` of CPU tensors of shape (B,) (counts (B, C)). ``offsets``
    (C,): calibration offsets of the base classifier's logits (:func:`sample_counts`).
    """
    from scipy.stats import norm  # scipy.stats (~0.3 s): only when certifying

    _check_args(sigma, alpha, batch_size)
    n0 = _check_positive_int("n0", n0)
    n = _check_positive_int("n", n)
    with torch.no_grad():
        embeds = embed_inputs(model, batch)
    # independent streams for the selection and the estimation samples (Cohen's n0 and n)
    sel_seed = None if seed is None else derive_seed(seed, 0)
    est_seed = None if seed is None else derive_seed(seed, 1)
    counts0 = sample_counts(
        model, batch, n=n0, sigma=sigma, batch_size=batch_size, seed=sel_seed, embeds=embeds, offsets=offsets
    )
    guess = counts0.argmax(dim=1)
    counts = sample_counts(
        model, batch, n=n, sigma=sigma, batch_size=batch_size, seed=est_seed, embeds=embeds, offsets=offsets
    )
    n_a = counts.gather(1, guess.unsqueeze(1)).squeeze(1).cpu().numpy()
    p_lower = clopper_pearson_lower(n_a, n, alpha)
    certified = p_lower > 0.5
    radius = np.where(certified, sigma * norm.ppf(np.where(certified, p_lower, 0.75)), 0.0)
    prediction = torch.where(torch.from_numpy(certified), guess.cpu(), torch.full_like(guess.cpu(), ABSTAIN))
    return CertifyResult(
        prediction=prediction,
        radius=torch.from_numpy(radius),
        p_lower=torch.from_numpy(p_lower),
        counts=counts.cpu(),
    )


predict = smoothed_predict  # the name of Cohen et al.'s routine
