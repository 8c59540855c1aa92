"""The PPO math, checked against numbers worked out by hand on tensors of a few tokens.

Each test states the case, does the arithmetic in comments, and compares the function with it.
Padded positions carry deliberately absurd values (99, 7.0, ...): they must never show up.
"""

from __future__ import annotations

import math

import pytest
import torch

from policy_trainer.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    generalized_advantages,
    kl_per_token,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    per_token_rewards,
    shape_rewards,
    shaped_scores,
)


def close(actual: torch.Tensor | float, expected, tolerance: float = 1e-6) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        atol=tolerance,
        rtol=0,
    )


# --- masked statistics -----------------------------------------------------------------------


def test_masked_mean_and_variance_ignore_padded_positions():
    values = torch.tensor([[2.0, 4.0, 6.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # mean of (2, 4, 6) = 4; squared deviations 4, 0, 4 -> biased 8/3, unbiased 8/3 * 3/2 = 4
    close(masked_mean(values, mask), 4.0)
    close(masked_var(values, mask, unbiased=False), 8 / 3)
    close(masked_var(values, mask), 4.0)


def test_masked_mean_along_a_dimension_is_per_row():
    values = torch.tensor([[1.0, 3.0, 99.0], [2.0, 2.0, 8.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    close(masked_mean(values, mask, dim=1), [2.0, 4.0])  # (1+3)/2, (2+2+8)/3


def test_masked_whiten_gives_mean_zero_and_unit_variance_over_real_tokens():
    values = torch.tensor([[2.0, 4.0, 6.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # mean 4, unbiased std 2: (2-4)/2, (4-4)/2, (6-4)/2; padding stays 0
    close(masked_whiten(values, mask), [[-1.0, 0.0, 1.0, 0.0]])


def test_masked_whiten_without_shift_keeps_the_mean():
    values = torch.tensor([[2.0, 4.0, 6.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # (v - 4) / 2 + 4: the spread shrinks to unit variance but the sign of the rewards survives
    close(masked_whiten(values, mask, shift_mean=False), [[3.0, 4.0, 5.0, 0.0]])


# --- log-probs, entropy, KL --------------------------------------------------------------------


def test_logprobs_and_entropy_are_those_of_the_softmax_of_the_logits():
    # softmax(0, log 3) = (1/4, 3/4)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    close(logprobs_from_logits(logits, torch.tensor([1])), [math.log(0.75)])
    close(entropy_from_logits(logits), [-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))])
    close(entropy_from_logits(torch.zeros(1, 4)), [math.log(4.0)])  # uniform over 4


def test_k1_is_the_log_ratio_and_can_be_negative():
    logprobs = torch.log(torch.tensor([0.5, 0.25]))
    ref_logprobs = torch.log(torch.tensor([0.25, 0.5]))
    # log(0.5 / 0.25) = log 2; log(0.25 / 0.5) = -log 2
    close(kl_per_token(logprobs, ref_logprobs, "k1"), [math.log(2), -math.log(2)])


def test_k3_is_r_minus_one_minus_log_r_and_never_negative():
    logprobs = torch.log(torch.tensor([0.5, 0.25, 0.3]))
    ref_logprobs = torch.log(torch.tensor([0.25, 0.5, 0.3]))
    # r = p_ref / p: 0.5 -> (0.5 - 1) - log 0.5 = 0.19315; 2 -> (2 - 1) - log 2 = 0.30685; 1 -> 0
    expected = [-0.5 + math.log(2), 1 - math.log(2), 0.0]
    close(kl_per_token(logprobs, ref_logprobs, "k3"), expected)


def test_an_unknown_kl_estimator_is_refused():
    with pytest.raises(ValueError, match="k2"):
        kl_per_token(torch.zeros(1), torch.zeros(1), "k2")  # type: ignore[arg-type]


# --- rewards and GAE ---------------------------------------------------------------------------


def test_the_score_lands_on_the_last_real_token_and_the_kl_penalty_on_every_token():
    scores = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # beta 0.5: row 0 -> -0.05, -0.1, -0.15 + 1; row 1 -> -0.25, -0.25 + 2, padding 0
    rewards = per_token_rewards(scores, kl, mask, beta=0.5)
    close(rewards, [[-0.05, -0.1, 0.85], [-0.25, 1.75, 0.0]])


def test_gae_with_gamma_1_and_lambda_half_sums_discounted_td_errors():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.1, 0.2, 0.4]])
    mask = torch.ones(1, 3)
    # t=2: delta = 1 + 0 (no value after the last token) - 0.4 = 0.6;        A2 = 0.6
    # t=1: delta = 0 + 0.4 - 0.2 = 0.2;                   A1 = 0.2 + 0.5 * 0.6 = 0.5
    # t=0: delta = 0 + 0.2 - 0.1 = 0.1;                   A0 = 0.1 + 0.5 * 0.5 = 0.35
    advantages, returns = generalized_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    close(advantages, [[0.35, 0.5, 0.6]])
    close(returns, [[0.45, 0.7, 1.0]])  # A + V


def test_gae_takes_the_value_after_the_last_real_token_as_zero_and_ignores_padding():
    rewards = torch.tensor([[0.1, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.2, 7.0]])  # the padded value 7.0 must not be bootstrapped from
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # t=1 (last real): delta = 1.0 + 1 * 0 - 0.2 = 0.8;   A1 = 0.8
    # t=0: delta = 0.1 + 1 * 0.2 - 0.5 = -0.2;             A0 = -0.2 + 1 * 0.5 * 0.8 = 0.2
    advantages, returns = generalized_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    close(advantages, [[0.2, 0.8, 0.0]])
    close(returns, [[0.7, 1.0, 0.0]])


def test_gae_discounts_with_gamma():
    rewards = torch.tensor([[0.0, 1.0]])
    values = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    # lam 1, gamma 0.9: A1 = 1; A0 = 0 + 0.9 * 0 - 0 + 0.9 * 1 * 1 = 0.9 (the discounted return)
    advantages, _ = generalized_advantages(rewards, values, mask, gamma=0.9, lam=1.0)
    close(advantages, [[0.9, 1.0]])


def shaped_batch(**changes) -> dict[str, torch.Tensor]:
    """Two responses, the second one token shorter; its padded position holds absurd values."""
    batch = {
        "scores": torch.tensor([1.0, -2.0]),
        "logprobs": torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.2, 99.0]]),
        "ref_logprobs": torch.tensor([[-1.5, -1.8, -0.5], [-1.0, -0.7, -7.0]]),
        "values": torch.tensor([[0.1, 0.2, 0.3], [0.4, -0.1, 7.0]]),
        "mask": torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
    }
    return {**batch, **changes}


def test_experience_shaping_penalises_kl_scores_the_last_real_token_and_leaves_padding_out():
    shaped = shape_rewards(**shaped_batch(), beta=0.1, gamma=1.0, lam=0.5, whiten_advantages=True)
    # k1 = log p - log p_ref: (0.5, -0.2, 0) and (-0.5, 0.5, padding -> 0)
    close(shaped.kl, [[0.5, -0.2, 0.0], [-0.5, 0.5, 0.0]])
    # r_t = -0.1 * kl_t: a token the policy likes more than the reference costs reward; the
    # score sits on each response's last real token (row 1: its second, not the padded third)
    close(shaped.rewards, [[-0.05, 0.02, 1.0], [0.05, 0.5 * -0.1 - 2.0, 0.0]])
    # GAE, gamma 1, lambda 0.5, backwards:
    #   row 0: A2 = 1 - 0.3 = 0.7; A1 = 0.02 + 0.3 - 0.2 + 0.5 * 0.7 = 0.47;
    #          A0 = -0.05 + 0.2 - 0.1 + 0.5 * 0.47 = 0.285
    #   row 1: A1 = -2.05 + 0 (nothing after its last token) + 0.1 = -1.95;
    #          A0 = 0.05 - 0.1 - 0.4 + 0.5 * -1.95 = -1.425
    unwhitened = torch.tensor([[0.285, 0.47, 0.7], [-1.425, -1.95, 0.0]])
    # Returns are the value targets: the advantages before whitening, plus the values.
    close(shaped.returns, [[0.385, 0.67, 1.0], [-1.025, -2.05, 0.0]])
    # Whitened over the five real tokens: mean -0.384, unbiased variance 5.88797 / 4.
    whitened = (unwhitened + 0.384) / math.sqrt(5.88797 / 4) * shaped_batch()["mask"]
    close(shaped.advantages, whitened)
    # Padding is zero in everything, and what sits there never reaches a real token.
    absurd = shaped_batch(
        logprobs=torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.2, -50.0]]),
        values=torch.tensor([[0.1, 0.2, 0.3], [0.4, -0.1, -3.0]]),
    )
    elsewhere = shape_rewards(**absurd, beta=0.1, gamma=1.0, lam=0.5, whiten_advantages=True)
    for name in ("kl", "rewards", "advantages", "returns"):
        assert getattr(shaped, name)[1, 2] == 0.0, name
        torch.testing.assert_close(getattr(elsewhere, name), getattr(shaped, name), msg=name)


# --- losses ------------------------------------------------------------------------------------


def test_clipped_policy_loss_takes_the_pessimistic_of_the_clipped_and_unclipped_objective():
    old_logprobs = torch.log(torch.full((1, 5), 0.5))
    # ratios 1.1 (inside 0.8..1.2), 1.5 (above), 0.5 (below), 0.5 (below), and a padded token
    ratios = torch.tensor([[1.1, 1.5, 0.5, 0.5, 3.0]])
    logprobs = old_logprobs + torch.log(ratios)
    advantages = torch.tensor([[2.0, 2.0, -1.0, 1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    # token: -A*ratio, -A*clip(ratio) -> max (the pessimistic bound)
    #  1.1, A=2:   -2.2, -2.2 -> -2.2  (inside the range: no clipping)
    #  1.5, A=2:   -3.0, -2.4 -> -2.4  (clipped: no credit for moving past 1.2)
    #  0.5, A=-1:   0.5,  0.8 ->  0.8  (clipped: no credit for moving past 0.8)
    #  0.5, A=1:   -0.5, -0.8 -> -0.5  (not clipped: moving back toward 1 is never cut off)
    result = clipped_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2)
    close(result.loss, (-2.2 - 2.4 + 0.8 - 0.5) / 4)
    close(result.clip_fraction, 2 / 4)
    log_ratios = [math.log(1.1), math.log(1.5), math.log(0.5), math.log(0.5)]
    close(result.approx_kl, 0.5 * sum(x * x for x in log_ratios) / 4)


def test_the_policy_loss_gradient_vanishes_where_the_ratio_is_clipped():
    old_logprobs = torch.log(torch.tensor([[0.5, 0.5]]))
    logprobs = (old_logprobs + torch.log(torch.tensor([[1.1, 1.5]]))).requires_grad_()
    advantages = torch.tensor([[2.0, 2.0]])
    clipped_policy_loss(logprobs, old_logprobs, advantages, torch.ones(1, 2)).loss.backward()
    # d/dlogp of -A * ratio / 2 tokens = -A * ratio / 2 = -1.1 inside; 0 where clipped
    close(logprobs.grad, [[-1.1, 0.0]])


def test_clipped_value_loss_takes_the_larger_error_of_the_clipped_and_unclipped_value():
    old_values = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    values = torch.tensor([[1.5, 1.1, 0.5, 50.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # c = 0.2: token 1: (1.5-2)^2 = 0.25, clip to 1.2 -> (1.2-2)^2 = 0.64 -> 0.64 (clipped)
    #          token 2: (1.1-0)^2 = 1.21, inside the range -> 1.21 (not clipped)
    #          token 3: (0.5-0)^2 = 0.25, clip to 0.8 -> 0.64 -> 0.64 (clipped)
    result = clipped_value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    close(result.loss, 0.5 * (0.64 + 1.21 + 0.64) / 3)
    close(result.clip_fraction, 2 / 3)


def test_explained_variance_is_one_for_a_perfect_value_and_zero_for_the_mean():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    close(explained_variance(returns.clone(), returns, mask), 1.0)
    close(explained_variance(torch.full((1, 4), 2.0), returns, mask), 0.0)


# --- KL controllers and score statistics ------------------------------------------------------


def test_adaptive_kl_controller_moves_beta_toward_the_target_with_a_clipped_step():
    # beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon, with n / horizon = 0.1
    above = AdaptiveKLController(init_beta=0.2, target=6.0, horizon=10_000)
    above.update(current_kl=9.0, n_steps=1000)  # 9/6 - 1 = 0.5, clipped to 0.2
    close(above.beta, 0.2 * (1 + 0.2 * 0.1))
    slightly_above = AdaptiveKLController(init_beta=0.2, target=6.0, horizon=10_000)
    slightly_above.update(current_kl=6.6, n_steps=1000)  # 6.6/6 - 1 = 0.1
    close(slightly_above.beta, 0.2 * (1 + 0.1 * 0.1))
    below = AdaptiveKLController(init_beta=0.2, target=6.0, horizon=10_000)
    below.update(current_kl=0.0, n_steps=1000)  # -1, clipped to -0.2
    close(below.beta, 0.2 * (1 - 0.2 * 0.1))


def test_fixed_kl_controller_ignores_the_kl_and_both_controllers_restore_their_beta():
    fixed = FixedKLController(0.05)
    fixed.update(current_kl=100.0, n_steps=64)
    assert fixed.beta == 0.05
    adaptive = AdaptiveKLController(init_beta=0.2, target=6.0, horizon=10_000)
    adaptive.update(current_kl=9.0, n_steps=1000)
    restored = AdaptiveKLController(init_beta=0.2, target=6.0, horizon=10_000)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.beta == adaptive.beta


def test_running_moments_merge_batches_into_the_mean_and_std_of_everything_seen():
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 3.0]))
    moments.update(torch.tensor([5.0, 7.0, 9.0]))
    # all of (1, 3, 5, 7, 9): mean 5, unbiased variance (16+4+0+4+16)/4 = 10
    close(moments.mean, 5.0)
    close(moments.std, math.sqrt(10.0))
    restored = RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert (restored.mean, restored.std, restored.count) == (moments.mean, moments.std, 5)


def test_scores_lose_the_missing_eos_penalty_then_scale_by_running_statistics_then_clip():
    scores = torch.tensor([1.0, 2.0, 3.0])
    ended = torch.tensor([True, False, True])
    # penalty 1 on the response that never ended: (1, 1, 3)
    close(shaped_scores(scores, ended, missing_eos_penalty=1.0), [1.0, 1.0, 3.0])
    moments = RunningMoments()
    moments.update(torch.tensor([0.0, 2.0, 4.0]))  # running mean 2, std 2
    shaped = shaped_scores(scores, ended, missing_eos_penalty=1.0, scaling="std", moments=moments)
    close(shaped, [0.5, 0.5, 1.5])  # / 2
    centred = shaped_scores(scores, ended, missing_eos_penalty=1.0, scaling="mean_std",
                            moments=moments, clip=0.4)  # fmt: skip
    close(centred, [-0.4, -0.4, 0.4])  # (1-2)/2, (1-2)/2, (3-2)/2 = -0.5, -0.5, 0.5, clipped
