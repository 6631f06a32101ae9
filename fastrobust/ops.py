"""Public tensor ops of fastrobust: fused embedding noise and the fused PGD step.

=====================  =========================================================  ===================
op                     math (per example, over unmasked entries)                   shapes
=====================  =========================================================  ===================
``add_noise``          x + sigma * z * mask, z ~ N(0,1) or U(-1,1)                 (B,L,H) -> (B,L,H)
``noisy_copies``       n independent draws of ``add_noise``                        (B,L,H) -> (n,B,L,H)
``pgd_init``           random start inside the L2 / Linf ball of radius epsilon    (B,L,H) -> (B,L,H)
``pgd_step``           d' = Proj_eps(d + a g/||g||)  (L2) or clamp(d + a sign g)   (B,L,H) -> (B,L,H)
=====================  =========================================================  ===================

Backends. ``FASTROBUST_BACKEND`` (read at every call, also inside a compiled graph) picks
the implementation (see :mod:`fastrobust.dispatch`):

* ``auto`` (default): the Triton kernels of ``fastrobust.kernels`` for CUDA tensors, and
  for CPU tensors when ``TRITON_INTERPRET=1`` was set before triton was imported (that is
  how kernel tests run without a GPU); the pure-torch twin :mod:`fastrobust.reference`
  otherwise (and when triton is not installed).
* ``triton``: always the kernels; CPU tensors without the interpreter raise a
  ``FastrobustError`` instead of a launch that would fail with "0 active drivers".
* ``torch``: always the reference.

float64 tensors take the reference under ``auto`` (the kernels compute in fp32). Supported
dtypes: fp32, fp16, bf16 (and float64 on the reference); anything else (e.g. float8) is a
``FastrobustError`` naming the argument. Bad arguments are checked by
:mod:`fastrobust.validation`, the same checks as the reference's.

Why fused: in eager PyTorch each touch of the embeddings is several full passes over a
(B, L, H) tensor (draw noise, scale, mask, add; or norm, divide, add, norm, rescale, add).
The noise kernel reads x and writes x + noise once, generating the noise in registers from
(seed, element offset) with Philox; the PGD step is one per-example reduction over
(g, d) followed by one elementwise pass that writes d' and embeds + d'. On a GPU the
Gaussian noise's Box-Muller transform uses the PTX approximations of log2/sin/cos
(errors ~1e-6, far below what a statistical test of the noise can see);
``FASTROBUST_PRECISE_NOISE=1`` (read at each launch) selects libdevice's precise functions.
Compiled kernels depend on dtypes and feature flags only, never on the sequence length, so
dynamically padded batches do not trigger recompilation.

torch.compile, CUDA graphs, devices. The four ops are registered as torch custom ops
(``torch.ops.fastrobust.*``, see :mod:`fastrobust._library`) with shape-only fake
implementations: ``torch.compile(..., fullgraph=True)`` traces through these functions
without a graph break (the fused kernels run as they are inside the compiled graph), and
``meta`` tensors propagate shapes. Every Triton launch runs under its tensors' CUDA device;
tensors on different devices are a ``FastrobustError``. No op synchronises with the host.

Random streams. ``seed=None`` draws a fresh seed on the tensors' device from torch's
default generator (``torch.randint`` on that device): ``torch.manual_seed`` reproduces a
run, no host synchronisation happens, and inside a captured CUDA graph the draw advances at
every replay, so each replay of ``add_noise``/``pgd_init`` gives fresh noise. An int seed in
[0, 2**31 - 1] is a host scalar: the same noise every time, also at every replay. A seed may
also be a one-element integer tensor on the tensors' device (e.g. a counter advanced inside
a graph): the kernels read it on the device; the torch reference reads it on the host (a
synchronisation on CUDA). Same seed, same backend, same device: same output. The Triton and
torch paths draw different streams of the same distribution (with ``seed=None`` the torch
path draws from the default generator directly).

Gradients: ``add_noise`` and ``noisy_copies`` are differentiable in ``embeds`` (identity
Jacobian; ``noisy_copies`` sums the n incoming gradients); nothing is saved for backward.
No gradient flows to a tensor ``sigma``. The delta returned by ``pgd_init`` and
``pgd_step`` never requires grad; their ``embeds + delta`` output is differentiable in
``embeds`` (identity Jacobian), so it can be the model's input while the embedding table
still gets its gradient.
"""

from __future__ import annotations

from torch import Tensor

from fastrobust import _library as _lib
from fastrobust import validation as _v
from fastrobust.dispatch import BACKENDS, backend_for, use_backend

__all__ = ["add_noise", "noisy_copies", "pgd_init", "pgd_step", "backend_for", "use_backend", "BACKENDS"]


def add_noise(
    embeds: Tensor,
    sigma: float | Tensor,
    *,
    seed: int | Tensor | None = None,
    distribution: str = "gaussian",
    mask: Tensor | None = None,
) -> Tensor:
    """Randomized-smoothing noise on the embeddings of real tokens.

    out = embeds + sigma * z * mask, with z ~ N(0, 1) (``distribution="gaussian"``) or
    z ~ U(-1, 1) (``"uniform"``, i.e. noise U(-sigma, sigma)), elementwise and independent.

    Args:
        embeds: (B, L, H) fp32/fp16/bf16.
        sigma: a number >= 0, or a (B,) float tensor (per-example sigma, e.g. NEFTune's
            alpha / sqrt(L * H)). Values of a CUDA tensor are not checked (that would
            synchronise); the laws are symmetric, so a negative entry acts as its absolute value.
        seed: int in [0, 2**31 - 1] (the same noise every call, also at every CUDA-graph
            replay); None draws a seed on the device from torch's default generator (fresh
            noise per call and per replay; ``torch.manual_seed`` reproduces it); or a
            one-element integer tensor on embeds' device.
        mask: (B, L), nonzero = real token; masked positions are returned exactly unchanged.

    Returns (B, L, H) in embeds' dtype (noise added in fp32). Gradient w.r.t. embeds is the
    identity; nothing is stored for backward.
    """
    embeds, sigma, seed, distribution, mask = _v.noise_args(embeds, sigma, seed, distribution, mask)
    reg = _lib.registered(embeds)
    args = (
        embeds,
        *_lib.sigma_args(sigma),
        *_lib.seed_args(seed, embeds, reg),
        distribution == "gaussian",
        mask,
    )
    return _lib.call(_lib.add_noise, reg, *args)


def noisy_copies(
    embeds: Tensor,
    n: int,
    sigma: float | Tensor,
    *,
    seed: int | Tensor | None = None,
    distribution: str = "gaussian",
    mask: Tensor | None = None,
) -> Tensor:
    """n independent noisy copies of embeds in one launch (smoothed prediction, certification).

    out[c] = embeds + sigma * z_c * mask for c < n, the z_c independent. On the Triton path
    copy c uses Philox offsets shifted by c * B * L * H, so copy 0 equals ``add_noise`` with the
    same seed (on the reference path as well). Arguments as for :func:`add_noise`; n >= 1.
    Returns (n, B, L, H) in embeds' dtype; the gradient w.r.t. embeds is the sum over copies.
    """
    embeds, sigma, seed, distribution, mask = _v.noise_args(embeds, sigma, seed, distribution, mask)
    n = _v.copies_arg(n)
    reg = _lib.registered(embeds)
    seeds = _lib.seed_args(seed, embeds, reg)
    args = (embeds, n, *_lib.sigma_args(sigma), *seeds, distribution == "gaussian", mask)
    return _lib.call(_lib.noisy_copies, reg, *args)


def pgd_init(
    embeds: Tensor,
    epsilon: float,
    *,
    norm: str = "l2",
    mask: Tensor | None = None,
    seed: int | Tensor | None = None,
    next_input: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Random start of PGD inside the epsilon ball (FreeLB's initialisation).

    L2: delta = u * mask * epsilon / sqrt(n_real * H), u ~ U(-1, 1), n_real = the example's
    number of real tokens (1 if none); |u| <= 1 guarantees ||delta||_2 <= epsilon (expected
    norm epsilon / sqrt(3)). Linf: delta = u * mask * epsilon.

    Args: embeds (B, L, H) (only its shape, dtype and device are used, unless next_input);
    epsilon >= 0; norm "l2" | "linf"; mask (B, L); seed as for :func:`add_noise`.
    Returns delta (B, L, H) in embeds' dtype, zero at masked positions, not requiring grad.
    With ``next_input=True`` returns (delta, embeds + delta), both written in the same pass
    (the second equal to torch's ``embeds + delta``); it is differentiable in embeds (identity).
    """
    embeds, epsilon, norm, mask, seed, next_input = _v.init_args(
        embeds, epsilon, norm, mask, seed, next_input
    )
    reg = _lib.registered(embeds)
    args = (embeds, epsilon, norm == "linf", mask, *_lib.seed_args(seed, embeds, reg), next_input)
    delta, nxt = _lib.call(_lib.pgd_init, reg, *args)
    return (delta, nxt) if next_input else delta


def pgd_step(
    delta: Tensor | None,
    grad: Tensor,
    *,
    step_size: float,
    epsilon: float | None,
    norm: str = "l2",
    mask: Tensor | None = None,
    embeds: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """One projected gradient-ascent step per example, fused.

    With a = step_size, eps = epsilon, norms and inner products per example over the
    unmasked (L, H) entries:

    * ``norm="l2"``: d' = (d + a g/||g||) * min(1, eps / ||d + a g/||g|| ||). One reduction
      pass gives ||g||^2, <d, g>, ||d||^2, and the identity
      ||d + a g/||g|| ||^2 = ||d||^2 + 2a<d,g>/||g|| + a^2 gives the projection scale, so a
      single elementwise pass writes d' (and embeds + d'). A zero or non-finite gradient
      (including a squared norm that overflows fp32) skips that example's step: d' = Proj(d).
    * ``norm="linf"``: d' = clamp(d + a sign(g), -eps, eps), sign(NaN) = 0.

    ``delta=None`` is a zero start that reads no delta (d' in embeds' dtype when embeds is
    given, else in grad's). ``epsilon=None``: no projection. Masked entries of d' are 0 and
    of embeds + d' equal embeds. Args: delta, grad, embeds (B, L, H) float (may differ in
    dtype); mask (B, L); step_size >= 0; epsilon >= 0 or None. Returns d' in delta's dtype,
    or (d', embeds + d') with the second in embeds' dtype when embeds is given; d' does not
    require grad, embeds + d' is differentiable in embeds (identity). No host synchronisation.
    """
    delta, grad, step_size, epsilon, norm, mask, embeds = _v.step_args(
        delta, grad, step_size, epsilon, norm, mask, embeds
    )
    args = (delta, grad, step_size, epsilon, norm == "linf", mask, embeds)
    new, nxt = _lib.call(_lib.pgd_step, _lib.registered(grad), *args)
    return new if embeds is None else (new, nxt)
