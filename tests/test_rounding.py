"""Rounding: unbiasedness and variance bound of stochastic rounding (Li & De), ties, reproducible noise."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.rounding import NoiseSource, derive_seed, round_half_away, stochastic_round


@settings(max_examples=25, deadline=None)
@given(st.floats(min_value=-50, max_value=50, allow_nan=False, allow_infinity=False))
def test_stochastic_round_is_unbiased_with_variance_at_most_a_quarter(value):
    x = torch.full((200_000,), value, dtype=torch.float64)
    rounded = stochastic_round(x, NoiseSource(seed=1))
    frac = value - torch.floor(torch.tensor(value, dtype=torch.float64)).item()
    # only the two neighbours of x are ever chosen
    assert set(torch.unique(rounded).tolist()) <= {float(torch.floor(x[0])), float(torch.floor(x[0]) + 1)}
    # E = x within 5 standard errors; Var = p(1-p) <= 1/4
    std_err = max((frac * (1 - frac) / x.numel()) ** 0.5, 1e-12)
    assert abs(rounded.mean().item() - value) <= 5 * std_err + 1e-12
    assert rounded.var(unbiased=False).item() <= 0.25 + 1e-3
    assert abs(rounded.var(unbiased=False).item() - frac * (1 - frac)) < 5e-3


def test_stochastic_round_probability_of_rounding_up_is_the_fraction():
    x = torch.full((100_000,), 2.3)
    up = (stochastic_round(x, NoiseSource(seed=0)) == 3).float().mean().item()
    assert abs(up - 0.3) < 0.01


def test_round_half_away_from_zero_at_ties():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, -0.49])
    assert round_half_away(x).tolist() == [-3, -2, -1, 1, 2, 3, 0, 0]
    # torch.round differs at ties (half to even): this is why the Li & De / Uhlich quantizers use half-away
    assert torch.round(x).tolist()[:3] == [-2, -2, -0]


def test_same_seed_same_noise_and_state_round_trips():
    a, b = NoiseSource(seed=7), NoiseSource(seed=7)
    x = torch.zeros(1000)
    assert torch.equal(a.uniform_like(x), b.uniform_like(x))
    assert not torch.equal(NoiseSource(seed=8).uniform_like(x), NoiseSource(seed=7).uniform_like(x))
    state = a.state()
    expected = a.uniform_like(x)
    resumed = NoiseSource(seed=0)
    resumed.load_state(state)
    assert torch.equal(resumed.uniform_like(x), expected)


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "fc1", "weight") == derive_seed(0, "fc1", "weight")
    assert derive_seed(0, "fc1", "weight") != derive_seed(0, "fc2", "weight")
    assert derive_seed(0, "fc1", "weight") != derive_seed(1, "fc1", "weight")


def test_16_bit_noise_is_uniform_independent_and_nearly_unbiased():
    source = NoiseSource(seed=3, resolution_bits=16)
    u = source.uniform_like(torch.zeros(400_001))
    assert u.shape == (400_001,) and 0 < u.min() and u.max() < 1
    codes = u * 65536 - 0.5
    assert torch.equal(torch.round(codes), codes)  # on the 16-bit grid (k + 1/2) / 2^16
    assert abs(u.mean().item() - 0.5) < 2e-3 and abs(u.var().item() - 1 / 12) < 2e-3
    # neighbours are different 16-bit fields of one 64-bit word, or of consecutive words: uncorrelated
    assert abs(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].item()) < 0.01
    # stochastic rounding with it: P(up) within 2^-17 of the fraction
    x = torch.full((400_000,), 7.3)
    up = (stochastic_round(x, NoiseSource(seed=1, resolution_bits=16)) == 8).float().mean().item()
    assert abs(up - 0.3) < 0.005


DRAWS = 4_000_000


def _p_up_16_bit(p):
    """P(16-bit noise rounds ``floor(x) + p`` up), exactly: ``#{k : (k + 1/2) / 2^16 >= 1 - p} / 2^16``."""
    u = (torch.arange(65536, dtype=torch.float64) + 0.5) / 65536
    return (u >= 1 - p).double().mean().item()


@pytest.mark.parametrize("p", [5e-6, 1e-5])
def test_24_bit_noise_rounds_up_small_probabilities_16_bit_noise_does_not(p):
    # a weight p grid steps above a level (SR late in a cosine schedule) must round up with probability p. 16-bit
    # uniforms round up with probability 0 where p < 2^-17 = 7.6e-6 and 2^-16 = 1.5e-5 for p in [2^-17, 3 2^-17)
    x = torch.full((DRAWS,), p)
    flips_24 = int(stochastic_round(x, NoiseSource(seed=2, resolution_bits=24)).sum())
    assert abs(flips_24 - p * DRAWS) < 4 * (p * DRAWS) ** 0.5 + 1  # 20 and 40 expected
    flips_16 = int(stochastic_round(x, NoiseSource(seed=2, resolution_bits=16)).sum())
    expected_16 = _p_up_16_bit(p) * DRAWS
    assert expected_16 == (0 if p < 2**-17 else DRAWS / 65536)
    assert abs(flips_16 - expected_16) < 4 * expected_16**0.5 + 1
    assert NoiseSource().resolution_bits == 24  # the default is float32's resolution


def test_16_bit_noise_bias_is_at_most_2_to_the_minus_17():
    for p in (1e-6, 2**-17, 1e-5, 1e-4, 0.3, 0.5 + 2**-18, 0.99999):
        assert abs(_p_up_16_bit(p) - p) <= 2**-17 + 1e-15, p


def test_noise_resolution_is_validated_and_24_bit_noise_uses_torch():
    with pytest.raises(ValueError, match="16 or 24"):
        NoiseSource(resolution_bits=12)
    a, b = NoiseSource(seed=5, resolution_bits=24), NoiseSource(seed=5, resolution_bits=24)
    assert torch.equal(a.uniform_like(torch.zeros(100)), b.uniform_like(torch.zeros(100)))
