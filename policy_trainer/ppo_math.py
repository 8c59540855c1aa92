"""The PPO math for language models, as small pure functions on tensors.

Shapes: per-token tensors are (batch, response_length), aligned with the response tokens; `mask`
is 1.0 on real response tokens and 0.0 on padding after EOS. Every mean is a masked mean, so
padding never enters a statistic.

Sources, each cited where it is used: PPO's clipped objective, Schulman et al. 2017, "Proximal
Policy Optimization Algorithms"; GAE, Schulman et al. 2016, "High-Dimensional Continuous Control
Using Generalized Advantage Estimation"; the KL-penalised reward and the adaptive KL controller,
Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences"; the language-model
details ("N-impl"), Huang et al. 2023, "The N Implementation Details of RLHF with PPO"; the KL
estimators, Schulman 2020, "Approximating KL Divergence"; and the options and defaults of Hugging
Face TRL's PPO trainers ("TRL": its last, 0.12 to 0.2x; "TRL classic": 0.4 to 0.11).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

KLEstimator = Literal["k1", "k3"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the positions where mask is 1 (over all of them, or along `dim`)."""
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked positions, with Bessel's correction by default (as TRL)."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count > 1:
            variance = variance * count / (count - 1)
    return variance


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Scale to unit variance over the masked positions; with shift_mean also to mean 0.
    Rewards are whitened with shift_mean=False so their sign survives; advantages with it."""
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) at each position: logits (..., vocab), tokens (...) -> (...)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logprobs, -1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the token distribution at each position: (..., vocab) -> (...)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return -(logprobs.exp() * logprobs).sum(-1)


def kl_per_token(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1"
) -> torch.Tensor:
    """An estimate of KL(policy || reference) at each sampled token (Schulman 2020).
    k1 = log p - log p_ref: unbiased, can be negative per token. k3 = (r - 1) - log r with
    r = p_ref / p: unbiased and never negative, lower variance."""
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        log_ratio = ref_logprobs - logprobs
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}: use 'k1' or 'k3'")


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """r_t = -beta * kl_t on every response token, plus the sequence's score on its last real
    token (Ziegler et al. 2019; N-impl: the reward model's score belongs to the last token)."""
    rewards = -beta * kl * mask
    last_token = (mask.cumsum(dim=1) == mask.sum(dim=1, keepdim=True)) & (mask > 0)
    # A response of length 0 has no token to carry its score; the caller never builds one.
    return rewards + last_token.to(rewards.dtype) * scores.unsqueeze(1)


def generalized_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016) backwards over the response:
    delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1},
    with V and A after the last real token taken as 0 (the episode ends there).
    Returns (advantages, returns = advantages + values), both zero on padding."""
    rewards, values = rewards * mask, values * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        # Padding after EOS is masked to 0, so the value "after the last token" is 0 for every row.
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


@dataclass(frozen=True)
class ShapedRewards:
    """A batch's per-token KL, rewards, advantages and returns, all zero on padding."""

    kl: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor  # whitened if asked
    returns: torch.Tensor  # targets of the value loss: the unwhitened advantages + values


def shape_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    kl_estimator: KLEstimator = "k1",
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten_rewards: bool = False,
    whiten_advantages: bool = True,
) -> ShapedRewards:
    """One score per sequence -> per-token rewards -> advantages and returns, in N-impl's order:
    the KL to the reference on every response token, r_t = -beta * kl_t plus the score on the last
    real token, optionally whitened rewards (keeping their mean), GAE, returns = A + V from the
    unwhitened advantages, then the advantages whitened over the batch."""
    kl = kl_per_token(logprobs, ref_logprobs, kl_estimator) * mask
    rewards = per_token_rewards(scores, kl, mask, beta)
    if whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = generalized_advantages(rewards, values, mask, gamma, lam)
    if whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    return ShapedRewards(kl=kl, rewards=rewards, advantages=advantages, returns=returns)


@dataclass(frozen=True)
class PolicyLossResult:
    """The clipped policy loss of a minibatch, with what it says about the update."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor  # share of tokens where the clipped term was the larger loss
    approx_kl: torch.Tensor  # 0.5 * mean((log ratio)^2): how far this update moved the policy


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> PolicyLossResult:
    """PPO's clipped surrogate (Schulman et al. 2017), as a loss to minimise:
    mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))) over response tokens."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return PolicyLossResult(
        loss=masked_mean(torch.maximum(unclipped, clipped), mask),
        clip_fraction=masked_mean((clipped > unclipped).float(), mask),
        approx_kl=0.5 * masked_mean(log_ratio**2, mask),
    )


@dataclass(frozen=True)
class ValueLossResult:
    """The clipped value loss of a minibatch, with how often the clipping decided it."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor  # share of tokens where the clipped value's error was larger


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float = 0.2,
) -> ValueLossResult:
    """0.5 * mean(max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)): the value head may not
    move further than c from its rollout-time estimate in one update (N-impl, value clipping)."""
    clipped_values = old_values + torch.clamp(
        values - old_values, -clip_range_value, clip_range_value
    )
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    return ValueLossResult(
        loss=0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask),
        clip_fraction=masked_mean((clipped_error > unclipped_error).float(), mask),
    )


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over response tokens: 1 is a perfect value model, 0 no better than
    predicting the mean, negative worse."""
    returns_variance = masked_var(returns, mask)
    if returns_variance <= 0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask) / returns_variance)


class FixedKLController:
    """A constant KL coefficient beta (TRL's last PPO trainer: 0.05)."""

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def update(self, current_kl: float, n_steps: int) -> None:
        """A fixed beta ignores the observed KL."""

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = state["beta"]


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019: beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon),
    which pushes the observed KL towards `target` nats; n is the number of samples in the step."""

    def __init__(self, init_beta: float, target: float, horizon: float) -> None:
        super().__init__(init_beta)
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.beta *= 1 + proportional_error * n_steps / self.horizon


class RunningMoments:
    """Mean and (unbiased) standard deviation of every score seen so far, merged batch by batch
    (Chan et al.'s parallel update), for score scaling (TRL's use_score_scaling/use_score_norm)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.sum_squared_deviations = 0.0

    @property
    def std(self) -> float:
        if self.count < 2:
            return 1.0
        return (self.sum_squared_deviations / (self.count - 1)) ** 0.5

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().double().flatten()
        batch_count = values.numel()
        if batch_count == 0:
            return
        batch_mean = float(values.mean())
        batch_deviations = float(((values - batch_mean) ** 2).sum())
        total = self.count + batch_count
        delta = batch_mean - self.mean
        self.mean += delta * batch_count / total
        merged = delta**2 * self.count * batch_count / total
        self.sum_squared_deviations += batch_deviations + merged
        self.count = total

    def state_dict(self) -> dict[str, float]:
        return {
            "count": self.count,
            "mean": self.mean,
            "sum_squared_deviations": self.sum_squared_deviations,
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.sum_squared_deviations = float(state["sum_squared_deviations"])


def shaped_scores(
    scores: torch.Tensor,
    ended_with_eos: torch.Tensor,
    *,
    missing_eos_penalty: float | None = None,
    scaling: Literal["none", "std", "mean_std"] = "none",
    moments: RunningMoments | None = None,
    clip: float | None = None,
) -> torch.Tensor:
    """The scores PPO rewards, from the reward model's: minus `missing_eos_penalty` where a
    response hit the length limit without EOS (TRL's missing_eos_penalty); divided by the running
    std of all scores seen, and first centred on their running mean with "mean_std" (`moments`,
    already updated with this batch; TRL classic's score scaling); clipped to [-clip, clip]."""
    if missing_eos_penalty is not None:
        scores = scores - missing_eos_penalty * (~ended_with_eos).to(scores.dtype)
    if scaling != "none":
        if moments is None:
            raise ValueError("score scaling needs the running moments of the scores")
        if scaling == "mean_std":
            scores = scores - moments.mean
        scores = scores / moments.std
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    return scores
