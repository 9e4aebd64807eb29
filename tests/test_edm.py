"""EDM preconditioning, loss, sampler and guidance (vimi.diffusion), checked against EDM's formulas,
diffusers' Karras schedule and the closed-form ideal denoiser of a Gaussian mixture."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from base.config import load_config, save_config
from vimi.diffusion import (
    EDMConfig,
    EDMLoss,
    EDMPrecond,
    GuidedDenoiser,
    SamplerConfig,
    drop_conditions,
    dynamic_threshold,
    edm_coefficients,
    edm_sampler,
    heun_nfe,
    karras_sigmas,
    make_generators,
    video_input_scale,
)
from vimi.diffusion.rng import share_across_frames
from vimi.models.fit import FIT, FITConfig

MICRO = FITConfig(patch_size=2, group_size=(2, 2), patch_dim=16, latents_per_group=2, latent_dim=16,
                  num_blocks=1, latent_layers=1, num_heads=2, cond_dim=8, frame_cond_channels=0)


def micro_fit(seed: int = 0) -> FIT:
    """A micro FIT whose zero-initialised output layer is randomised, so F is a non-trivial function."""
    torch.manual_seed(seed)
    net = FIT(MICRO)
    nn.init.normal_(net.out_proj.weight, std=0.3)
    return net.eval()


# ---------------------------------------------------------------- preconditioning

def test_coefficients_reduce_to_edm_and_D_is_identical():
    sigma = torch.logspace(-3, 2, 40, dtype=torch.float64)
    sd = 0.5
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sd, 1.0)
    # EDM Table 1 ("Network and preconditioning", EDM column).
    torch.testing.assert_close(c_skip, sd ** 2 / (sigma ** 2 + sd ** 2), rtol=1e-12, atol=0)
    torch.testing.assert_close(c_out, -(sigma * sd / (sigma ** 2 + sd ** 2).sqrt()), rtol=1e-12, atol=0)
    torch.testing.assert_close(c_in, 1 / (sd ** 2 + sigma ** 2).sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(c_noise, sigma.log() / 4, rtol=1e-12, atol=0)

    # D is EDM's D when our F predicts the negative of EDM's F (v instead of −v).
    torch.manual_seed(0)
    F_edm = nn.Conv1d(3, 3, 3, padding=1).double()

    class Neg(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = F_edm

        def forward(self, x, c_noise):
            return -self.f(x)

    precond = EDMPrecond(Neg(), sigma_data=sd, sigma_in=1.0)
    x = torch.randn(5, 3, 7, dtype=torch.float64)
    s = torch.tensor([0.01, 0.3, 1.0, 7.0, 80.0], dtype=torch.float64)
    sv = s[:, None, None]
    edm_c_skip, edm_c_out = sd ** 2 / (sv ** 2 + sd ** 2), sv * sd / (sv ** 2 + sd ** 2).sqrt()
    D_edm = edm_c_skip * x + edm_c_out * F_edm(x / (sd ** 2 + sv ** 2).sqrt())
    torch.testing.assert_close(precond(x, s), D_edm, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sigma_in", [1.0, math.sqrt(8), 4.0])
def test_ideal_F_target_has_unit_variance(sigma_in):
    # The point of the coefficients: for data of std σ_d, F's input and its regression target
    # (x − c_skip y)/c_out have unit variance at every σ, whatever σ_in (EDM Appendix B.6).
    gen = torch.Generator().manual_seed(0)
    sd = 1.0
    x = torch.randn(50_000, generator=gen, dtype=torch.float64) * sd
    eps = torch.randn(50_000, generator=gen, dtype=torch.float64)
    for sigma in [0.01, 0.2, 1.0, 5.0, 50.0]:
        s = torch.tensor(sigma, dtype=torch.float64)
        c_skip, c_out, c_in, _ = edm_coefficients(s, sd, sigma_in)
        y = x / sigma_in + s * eps
        assert abs((c_in * y).var().item() - 1) < 0.03
        target = (x - c_skip * y) / c_out
        assert abs(target.var().item() - 1) < 0.03
        # ... and that target is the normalised v = σ_d² ε − σ x (the network predicts v, docs/architecture.md).
        torch.testing.assert_close(target, (sd ** 2 * eps - s * x) / (sd * (s ** 2 + sd ** 2).sqrt()))


@pytest.mark.parametrize("sigma_in,sigma_data", [(1.0, 0.5), (2.5, 1.0)])
def test_denoiser_tends_to_identity_as_sigma_vanishes(sigma_in, sigma_data):
    precond = EDMPrecond(micro_fit(), sigma_data=sigma_data, sigma_in=sigma_in)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 2, 4, 4)
    eps = torch.randn_like(x)
    errs = []
    with torch.no_grad():
        F_mag = precond.backbone(x, torch.zeros(2), torch.zeros(2, 0, 8)).abs().mean()
        assert F_mag > 1e-2  # the backbone is not trivially zero
        for sigma in [1e-1, 1e-2, 1e-3, 1e-4]:
            D = precond(x / sigma_in + sigma * eps, torch.full((2,), sigma), cond=torch.zeros(2, 0, 8))
            errs.append((D - x).abs().max().item())
    # |D − x| = O(σ): three decades of σ take the error down by (nearly) three decades.
    assert errs[-1] < 5e-3 and errs[0] / errs[-1] > 300, errs
    assert all(b < a for a, b in zip(errs, errs[1:]))


def test_input_scale():
    assert video_input_scale(8, 32, 32) == pytest.approx(math.sqrt(8))
    assert video_input_scale(1, 64, 64, 32, 32) == pytest.approx(2.0)
    assert EDMConfig().input_scale(16, 64, 64) == pytest.approx(2 * 4)
    assert EDMConfig(sigma_in=3.0).input_scale(16, 64, 64) == 3.0
    with pytest.raises(ValueError):
        video_input_scale(0, 32, 32)
    with pytest.raises(ValueError, match="input_scale"):  # σ_in per clip: never silently 1
        EDMLoss.from_config(EDMConfig())
    assert EDMPrecond.from_config(nn.Identity(), EDMConfig(), sigma_in=2.0).sigma_in == 2.0


def test_precond_rejects_bad_input():
    precond = EDMPrecond(micro_fit())
    with pytest.raises(ValueError):
        precond(torch.randn(2, 3, 2, 4, 4), torch.zeros(2))  # σ = 0 has no c_noise
    with pytest.raises(ValueError):
        precond(torch.randn(2, 3, 2, 4, 4), torch.ones(3))   # wrong number of σ
    with pytest.raises(ValueError):
        EDMPrecond(micro_fit(), sigma_data=0.0)


# ---------------------------------------------------------------- sampler

@pytest.mark.parametrize("n", [1, 2, 5, 18, 50])
@pytest.mark.parametrize("rho", [7.0, 3.0])
def test_karras_sigmas_match_diffusers(n, rho):
    from diffusers import EDMEulerScheduler

    sched = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, sigma_schedule="karras", rho=rho)
    sched.set_timesteps(n)
    ours = karras_sigmas(n, 0.002, 80.0, rho)
    assert ours.shape == sched.sigmas.shape == (n + 1,)
    torch.testing.assert_close(ours.float(), sched.sigmas.float(), rtol=1e-5, atol=1e-7)


class Mixture:
    """A 2-D Gaussian mixture in x space and its closed-form ideal denoiser E[x | x/σ_in + σε]."""

    def __init__(self):
        d = torch.float64
        self.w = torch.tensor([0.5, 0.3, 0.2], dtype=d)
        self.mu = torch.tensor([[-1.5, 0.0], [1.5, 1.0], [0.5, -1.5]], dtype=d)
        self.cov = torch.stack([torch.tensor([[0.09, 0.04], [0.04, 0.06]]),
                                torch.tensor([[0.04, 0.0], [0.0, 0.16]]),
                                torch.tensor([[0.05, -0.02], [-0.02, 0.05]])]).to(d)

    def denoise(self, y, sigma, sigma_in):
        # σ_in y = x + (σ_in σ) ε, so each component's evidence is N(μ_k, Σ_k + (σ_in σ)² I);
        # with Σ_k = U Λ Uᵀ, (Σ_k + s² I)⁻¹ = U diag(1/(λ + s²)) Uᵀ (cheap for thousands of samples).
        z = y * sigma_in[:, None]
        s2 = ((sigma * sigma_in) ** 2)[:, None, None]                       # (B, 1, 1)
        lam, U = torch.linalg.eigh(self.cov)                                # (K, 2), (K, 2, 2)
        diff = z[:, None] - self.mu[None]                                   # (B, K, 2)
        proj = torch.einsum("kij,bki->bkj", U, diff)                        # Uᵀ diff, (B, K, 2)
        inv = 1.0 / (lam[None] + s2)                                        # (B, K, 2)
        logp = -0.5 * (proj ** 2 * inv).sum(-1) - 0.5 * torch.log(lam[None] + s2).sum(-1) + self.w.log()
        resp = torch.softmax(logp, dim=1)                                   # (B, K)
        post = self.mu[None] + torch.einsum("kij,bkj->bki", U, lam[None] * inv * proj)  # μ + Σ (Σ+s²I)⁻¹ diff
        return (resp[..., None] * post).sum(1)


class IdealF(nn.Module):
    """The backbone F that makes EDMPrecond's D the mixture's ideal denoiser (inverts the precond algebra)."""

    def __init__(self, mixture: Mixture, sigma_data: float, sigma_in: float):
        super().__init__()
        self.m, self.sd, self.s_in = mixture, sigma_data, sigma_in

    def forward(self, x_in, c_noise):
        sigma = torch.exp(4 * c_noise)
        c_skip, c_out, c_in, _ = edm_coefficients(sigma[:, None], self.sd, self.s_in)
        y = x_in / c_in
        D = self.m.denoise(y, sigma, torch.full_like(sigma, self.s_in))
        return (D - c_skip * y) / c_out


@pytest.mark.parametrize("churn", [0.0, 40.0])
def test_sampler_with_ideal_denoiser_reproduces_gaussian_mixture(churn):
    mix = Mixture()
    sigma_in, sd = 2.0, 1.0
    precond = EDMPrecond(IdealF(mix, sd, sigma_in), sigma_data=sd, sigma_in=sigma_in)
    n = 4000
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.manual_seed(1)  # churn noise from the global RNG (per-sample seeds are tested below)
    out = edm_sampler(precond, noise, num_steps=32, S_churn=churn, sigma_in=sigma_in)
    assert out.nfe == heun_nfe(32)
    x = out.samples
    assert torch.isfinite(x).all()
    # Assign each sample to its most likely component (means are > 5 std apart).
    label = torch.stack([-(((x - m) @ torch.linalg.inv(c)) * (x - m)).sum(1) - torch.logdet(c)
                         for m, c in zip(mix.mu, mix.cov)], dim=1).argmax(1)
    for k in range(3):
        xs = x[label == k]
        nk = xs.shape[0]
        assert abs(nk / n - mix.w[k].item()) < 0.03, (k, nk / n)
        se = (mix.cov[k].diagonal() / nk).sqrt()
        assert ((xs.mean(0) - mix.mu[k]).abs() < 4 * se + 0.01).all(), (k, xs.mean(0), mix.mu[k])
        cov = torch.cov(xs.T)
        assert ((cov - mix.cov[k]).abs() < 0.15 * mix.cov[k].abs().max() + 0.004).all(), (k, cov, mix.cov[k])


def test_sampler_is_per_sample_deterministic_across_batch_sizes():
    precond = EDMPrecond(micro_fit(), sigma_data=1.0, sigma_in=2.0)
    kw = dict(num_steps=4, S_churn=10.0, sigma_in=2.0, dtype=torch.float32)
    big = edm_sampler(lambda x, s, sigma_in: precond(x, s, sigma_in=sigma_in), shape=(4, 3, 2, 4, 4),
                      seeds=[10, 11, 12, 13], **kw).samples
    one = edm_sampler(lambda x, s, sigma_in: precond(x, s, sigma_in=sigma_in), shape=(1, 3, 2, 4, 4),
                      seeds=[12], **kw).samples
    again = edm_sampler(lambda x, s, sigma_in: precond(x, s, sigma_in=sigma_in), shape=(4, 3, 2, 4, 4),
                        seeds=[10, 11, 12, 13], **kw).samples
    assert torch.equal(big, again)
    torch.testing.assert_close(one[0], big[2], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(big[0], big[1])
    with pytest.raises(ValueError):
        edm_sampler(precond, shape=(2, 3), seeds=[1])


def _frame_correlation(v: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> the (T, T) correlation of its frames over every other axis."""
    return torch.corrcoef(v.transpose(0, 2).reshape(v.shape[2], -1))


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_shared_frame_noise_has_unit_variance_and_the_asked_correlation(share):
    noise = torch.randn(2000, 2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    out = share_across_frames(noise, share)
    assert abs(out.var().item() - 1) < 0.02
    off_diagonal = _frame_correlation(out)[~torch.eye(4, dtype=torch.bool)]
    assert (off_diagonal - share).abs().max() < 0.03
    if share == 0:
        assert torch.equal(out, noise)                        # the default draws exactly what it drew before
    with pytest.raises(ValueError, match="frame noise share"):
        share_across_frames(noise, 1.0)


def test_sampler_and_loss_draw_the_noise_training_used():
    def first_input(**share) -> torch.Tensor:   # the sampler's first denoiser input: σ_max · its initial noise
        seen = []
        edm_sampler(lambda x, s, sigma_in: seen.append(x) or torch.zeros_like(x), shape=(64, 2, 8, 4, 4),
                    seeds=list(range(64)), num_steps=2, dtype=torch.float32, **share)
        return seen[0]

    off = ~torch.eye(8, dtype=torch.bool)
    assert _frame_correlation(first_input())[off].abs().max() < 0.15
    assert (_frame_correlation(first_input(frame_noise_share=0.6))[off] - 0.6).abs().max() < 0.1
    # The loss noises clean zeros: the network's input is σ·ε, one σ per clip (normalised away here).
    seen = []
    loss = EDMLoss(sigma_data=0.5, sigma_in=1.0, frame_noise_share=0.6)
    loss(lambda x, s, sigma_in: seen.append(x) or torch.zeros_like(x), torch.zeros(64, 2, 8, 4, 4))
    eps = seen[0] / seen[0].flatten(1).std(1)[:, None, None, None, None]
    assert (_frame_correlation(eps)[off] - 0.6).abs().max() < 0.1
    with pytest.raises(ValueError, match="frame_noise_share"):
        EDMLoss(frame_noise_share=1.0)


# ---------------------------------------------------------------- loss

def test_loss_of_zero_F_is_one_per_element():
    # With F = 0 the EDM-weighted loss on data of std σ_d is exactly the unit target variance (σ_in = 1).
    class Zero(nn.Module):
        def forward(self, x, c_noise):
            return torch.zeros_like(x)

    loss_fn = EDMLoss(sigma_data=0.5, sigma_in=1.0)
    precond = EDMPrecond(Zero(), sigma_data=0.5, sigma_in=1.0)
    torch.manual_seed(0)
    x = torch.randn(256, 4096, dtype=torch.float64) * 0.5
    loss = loss_fn(precond, x)
    assert loss.shape == (256,)
    assert abs(loss.mean().item() - 1) < 0.01


@pytest.mark.parametrize("sigma_in", [1.0, 2.0])
def test_given_residual_denoises_the_difference_from_the_given_frames(sigma_in):
    # D = a + D'(x_noisy - a/σ_in): with a denoiser that knows nothing (F = 0), a clip given its first frame
    # comes out as that frame held at high σ, and the t2v clip (no frame given: a = 0) is untouched.
    from vimi.models import frame_condition

    class Zero(nn.Module):
        def forward(self, x, c_noise, frame_cond=None):
            return torch.zeros_like(x)

    torch.manual_seed(0)
    video = torch.randn(2, 3, 4, 6, 6, dtype=torch.float64) * 0.5
    fc = frame_condition(video, torch.tensor([1, 0]))                      # clip 0 given frame 0, clip 1 not
    plain = EDMPrecond(Zero(), sigma_data=0.5, sigma_in=sigma_in)
    residual = EDMPrecond(Zero(), sigma_data=0.5, sigma_in=sigma_in, given_residual=True)
    x_noisy = video / sigma_in + 1e4 * torch.randn_like(video)
    D = residual(x_noisy, 1e4, frame_cond=fc)
    assert torch.allclose(D[0], video[0, :, :1].expand_as(video[0]), atol=1e-3)   # the given frame, held
    assert torch.allclose(D[1], plain(x_noisy[1:], 1e4, frame_cond=fc[1:])[0])
    # At any σ it is the plain denoiser applied to the residual, shifted back by the anchor.
    x_noisy = video / sigma_in + 0.7 * torch.randn_like(video)
    anchor = fc[:, :3]
    expect = anchor + plain(x_noisy - anchor / sigma_in, 0.7, frame_cond=fc)
    assert torch.allclose(residual(x_noisy, 0.7, frame_cond=fc), expect)
    assert EDMPrecond.from_config(Zero(), EDMConfig(given_residual=True), sigma_in).given_residual


def test_loss_is_finite_and_decreases_when_fitting_a_fixed_batch():
    torch.manual_seed(0)
    net = FIT(MICRO)
    cfg = EDMConfig()
    precond = EDMPrecond.from_config(net, cfg, sigma_in=2.0)
    loss_fn = EDMLoss.from_config(cfg, sigma_in=2.0)
    x = torch.rand(4, 3, 2, 8, 8) * 2 - 1
    cond = dict(cond=torch.randn(4, 3, 8), cond_mask=torch.tensor([[1, 1, 0]] * 4, dtype=torch.bool))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        gens = [torch.Generator().manual_seed(s) for s in range(4)]  # same σ, ε every step
        loss = loss_fn(precond, x, generators=gens, **cond).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[0], losses

    for P_mean in (-9.0, 6.0):  # extreme noise levels stay finite
        extreme = EDMLoss(P_mean=P_mean, P_std=0.5, sigma_data=1.0, sigma_in=2.0)
        assert torch.isfinite(extreme(precond, x, **cond)).all()


def test_foreground_weights_raise_the_pixels_off_the_frames_colour_and_keep_the_mean():
    from vimi.diffusion.loss import foreground_weights

    x = torch.full((2, 3, 4, 8, 8), -0.5)          # two clips of a flat scene colour
    x[0, :, :, 2:4, 2:4] = 0.9                      # clip 0 has a 2x2 object in every frame
    w = foreground_weights(x, alpha=4.0)
    assert w.shape == (2, 1, 4, 8, 8)
    torch.testing.assert_close(w.flatten(1).mean(1), torch.ones(2))
    assert (w[0, :, :, 2:4, 2:4] / w[0, :, :, 0, 0, None, None] - 5).abs().max() < 1e-6   # 1 + α against 1
    assert torch.equal(w[1], torch.ones_like(w[1]))  # no object: uniform, the plain EDM loss


def test_dilated_foreground_weights_also_raise_the_background_around_and_inside_an_outline():
    from vimi.diffusion.loss import foreground_weights

    x = torch.full((1, 3, 2, 12, 12), -0.5)
    x[..., 3:8, 3:8] = 0.9
    x[..., 5, 5] = -0.5                             # a ring: one background pixel inside the object
    w = foreground_weights(x, alpha=4.0, dilate=1)
    heavy = w[0, 0, 0] > w[0, 0, 0, 0, 0]
    assert heavy[2:9, 2:9].all() and heavy.sum() == 49   # the 5x5 object grown by one pixel each way, hole included
    plain = foreground_weights(x, alpha=4.0)[0, 0, 0]
    assert plain[5, 5] < plain[4, 4] and plain[2, 2] < plain[4, 4]     # undilated: hole and rim weigh as background
    torch.testing.assert_close(w.flatten(1).mean(1), torch.ones(1))


def test_foreground_weights_of_a_latent_come_from_its_pixels_pooled_to_the_latent_grid():
    """Latent mode: the object is found in the clip's pixels and a latent cell weighs as the object's if any of
    its pixels does; the latent's own values play no part."""
    from vimi.diffusion.loss import foreground_weights

    pixels = torch.full((2, 3, 2, 16, 16), -0.5)
    pixels[0, :, :, 5:7, 9:11] = 0.9                 # clip 0: an object inside latent cell (row 1, col 2) at f = 4
    z = torch.randn(2, 8, 2, 4, 4)                   # the latents: noise, as a scene's cells can be
    w = foreground_weights(z, alpha=4.0, pixels=pixels)
    assert w.shape == (2, 1, 2, 4, 4)
    heavy = w[0, 0, 0] > w[0, 0, 0, 0, 0]
    assert heavy[1, 2] and heavy.sum() == 1
    torch.testing.assert_close(w.flatten(1).mean(1), torch.ones(2))
    assert torch.equal(w[1], torch.ones_like(w[1]))  # no object: the plain loss

    def zero_net(x_noisy, sigma, sigma_in=None):
        return torch.zeros_like(x_noisy)

    z = torch.zeros(2, 8, 2, 4, 4)
    z[:, :, :, 1, 2] = 1.0                           # the only error a zero denoiser makes is on the object cell
    loss = EDMLoss(sigma_data=0.5, foreground_weight=4.0)
    weighted = loss(zero_net, z, generators=make_generators([1, 2]), pixels=pixels)
    plain = EDMLoss(sigma_data=0.5)(zero_net, z, generators=make_generators([1, 2]))
    torch.testing.assert_close(weighted / plain, torch.tensor([5.0 / (1 + 4 / 16), 1.0]))


def test_high_sigma_mode_trains_the_asked_share_there_and_is_off_by_default():
    seen = []

    def net(x_noisy, sigma, sigma_in=None):
        seen.append(sigma.log())
        return torch.zeros_like(x_noisy)

    x = torch.zeros(8000, 1)
    EDMLoss(P_mean=-0.4, P_std=1.0, high=(0.3, 2.3, 0.2))(net, x)
    EDMLoss(P_mean=-0.4, P_std=1.0)(net, x)
    mixed, plain = seen
    assert abs((mixed > 1.8).float().mean().item() - 0.3) < 0.03        # the high mode's share, around ln 10
    assert abs(mixed[mixed > 1.8].mean().item() - 2.3) < 0.05
    assert (plain > 1.8).float().mean().item() < 0.03                  # N(-0.4, 1): 1.4% above ln σ = 1.8
    given = torch.arange(8000) % 2 == 0                                    # P_high_given_only: clips given frames
    EDMLoss(P_mean=-0.4, P_std=1.0, high=(1.0, 2.3, 0.2), high_given_only=True)(net, x, given=given)
    only = seen[-1]
    assert (only[given] > 1.8).float().mean().item() > 0.97 and (only[~given] > 1.8).float().mean().item() < 0.03
    with pytest.raises(ValueError, match="high-σ mode"):
        EDMLoss(high=(1.5, 2.3, 0.5))


def test_loss_generators_make_it_reproducible():
    precond = EDMPrecond(micro_fit(), sigma_in=2.0)
    loss_fn = EDMLoss(sigma_in=2.0)
    x = torch.randn(3, 3, 2, 4, 4)
    with torch.no_grad():
        a = loss_fn(precond, x, generators=[torch.Generator().manual_seed(s) for s in (1, 2, 3)])
        b = loss_fn(precond, x[1:2], generators=[torch.Generator().manual_seed(2)])
    torch.testing.assert_close(a[1:2], b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- guidance

def test_guidance_batches_cond_and_uncond_with_padding():
    precond = EDMPrecond(micro_fit(), sigma_in=2.0)
    torch.manual_seed(3)
    x, sigma = torch.randn(2, 3, 2, 4, 4), torch.tensor([0.5, 3.0])
    cond = dict(cond=torch.randn(2, 5, 8), cond_mask=torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool())
    null = dict(cond=torch.zeros(2, 1, 8), cond_mask=torch.zeros(2, 1, dtype=torch.bool))
    with torch.no_grad():
        D_c = precond(x, sigma, **cond)
        D_u = precond(x, sigma, **null)
        w = 4.0
        guided = GuidedDenoiser(precond, cond, null, guidance_scale=w)
        torch.testing.assert_close(guided(x, sigma, sigma_in=2.0), D_u + w * (D_c - D_u), rtol=1e-4, atol=1e-5)
        plain = GuidedDenoiser(precond, cond, null, guidance_scale=1.0)
        torch.testing.assert_close(plain(x, sigma, sigma_in=2.0), D_c)
    assert guided.calls == 1 and plain.calls == 1

    out = edm_sampler(guided, shape=(2, 3, 2, 4, 4), seeds=[0, 1], num_steps=3, sigma_in=2.0, dtype=torch.float32)
    assert out.nfe == heun_nfe(3) == guided.calls - 1


def test_guidance_interval_guides_only_inside_it():
    """Guidance in a limited interval: outside [lo, hi] the denoiser is the conditional one, at one half's cost."""
    precond = EDMPrecond(micro_fit(), sigma_in=1.0)
    torch.manual_seed(4)
    x = torch.randn(2, 3, 2, 4, 4)
    cond = dict(cond=torch.randn(2, 5, 8), cond_mask=torch.ones(2, 5, dtype=torch.bool))
    null = dict(cond=torch.zeros(2, 1, 8), cond_mask=torch.zeros(2, 1, dtype=torch.bool))
    batches = []
    net = lambda x, sigma, **kw: (batches.append(x.shape[0]), precond(x, sigma, **kw))[1]  # noqa: E731
    guided = GuidedDenoiser(net, cond, null, guidance_scale=3.0, interval=(0.5, 2.0))
    with torch.no_grad():
        for s, inside in ((0.1, False), (0.5, True), (1.0, True), (2.0, True), (10.0, False)):
            sigma = torch.full((2,), s)
            D_c, D_u = precond(x, sigma, **cond), precond(x, sigma, **null)
            want = D_u + 3.0 * (D_c - D_u) if inside else D_c
            batches.clear()
            torch.testing.assert_close(guided(x, sigma), want, rtol=1e-4, atol=1e-5)
            assert batches == [4 if inside else 2]


def test_drop_conditions_selects_per_sample():
    cond = dict(cond=torch.ones(3, 4, 2), cond_mask=torch.ones(3, 4, dtype=torch.bool), frame_cond=None)
    null = dict(cond=torch.zeros(3, 1, 2), cond_mask=torch.zeros(3, 1, dtype=torch.bool), frame_cond=None)
    out = drop_conditions(cond, null, torch.tensor([True, False, True]))
    assert out["cond"].shape == (3, 4, 2) and out["frame_cond"] is None
    assert out["cond"][1].abs().sum() == 0 and not out["cond_mask"][1].any()
    assert out["cond_mask"][0].all() and out["cond"][2].eq(1).all()
    with pytest.raises(ValueError):
        drop_conditions(cond, {"cond": null["cond"]}, torch.tensor([True, False, True]))


def test_dynamic_threshold():
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    torch.testing.assert_close(dynamic_threshold(x, 0.995), x)  # inside the data range: untouched
    big = x * 5
    out = dynamic_threshold(big, 1.0)
    assert out.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(out, big / big.reshape(2, -1).abs().amax(1).reshape(2, 1, 1, 1))


def test_configs_round_trip(tmp_path):
    cfg = SamplerConfig(num_steps=12, S_churn=5.0, dynamic_threshold=0.99)
    save_config(cfg, tmp_path / "s.yaml")
    assert load_config(SamplerConfig, tmp_path / "s.yaml") == cfg
    assert load_config(SamplerConfig, tmp_path / "s.yaml").S_max == math.inf
    e = EDMConfig(sigma_in=2.0)
    save_config(e, tmp_path / "e.yaml")
    assert load_config(EDMConfig, tmp_path / "e.yaml", ["P_mean=-0.5"]) == EDMConfig(sigma_in=2.0, P_mean=-0.5)
    assert cfg.step_kwargs()["num_steps"] == 12
