"""The whole human-feedback loop at tiny scale, every step as a user runs it: `policy-trainer
sample` draws K completions per prompt from a tiny seeded policy; `reward-service feedback
campaign create`, `invite` and `serve` put them in front of raters; two scripted raters sign in
through their invitation links and rank every item through the JSON API the task page uses, by
a known rule (more occurrences of RULE_WORD is better, equal counts tie); `feedback export`
writes the rankings; `reward-service train` trains a tiny reward model on them; served, it orders
the completions of prompts it never saw, drawn with another seed, by that rule far better than
chance.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import httpx
from browser import FeedbackServer
from helpers import HTTP_TIMEOUT_S, PPO_WORDS, build_word_level_lm, minilm_folder, start_server
from scipy.stats import binom

from reward_service.client import RewardClient

# The rule the raters rank by: the more times a completion says RULE_WORD, the better; equal
# counts tie. The word-level policy's random start says it in about one completion in three
# (10 new tokens over a 16-word vocabulary), so most items have a strict order to learn.
RULE_WORD = "good"
# Prompts are three words of the policy's vocabulary, never the rule's word: the order of an
# item's completions is then the completions' alone.
PROMPT_WORDS = [word for word in PPO_WORDS if word != RULE_WORD]
TRAIN_PROMPTS, HELD_OUT_PROMPTS = 120, 100
K, MAX_NEW_TOKENS = 4, 10
CAMPAIGN = "good-words"
ADMIN_KEY = "loop-admin-key"
RATERS = ("ada", "bo")
# The held-out test: under chance (a scorer that knows nothing of the rule orders each pair as a
# fair coin, independently of other pairs), the probability of as many right as the threshold
# or more must be below this.
CHANCE_P_VALUE = 1e-4


def rule_counts(completions: list[str]) -> list[int]:
    return [completion.split().count(RULE_WORD) for completion in completions]


def competition_ranks(counts: list[int]) -> list[int]:
    """Standard competition ranks, most occurrences first: counts [2, 0, 2, 1] -> [1, 4, 1, 3]."""
    return [1 + sum(other > count for other in counts) for count in counts]


def run_cli(module: str, *args: str) -> str:
    """A command line run as a user runs it, in a process of its own; returns its stdout."""
    command = [sys.executable, "-m", module, *args]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, (
        f"{module} {' '.join(args)} exited {completed.returncode}:\n{completed.stderr}"
    )
    return completed.stdout


def write_prompts(path: Path, count: int, seed: int, avoid: set[str] = frozenset()) -> set[str]:
    """`count` distinct prompts of three PROMPT_WORDS (none in `avoid`), one JSON line each."""
    rng = random.Random(seed)
    prompts: list[str] = []
    while len(prompts) < count:
        prompt = " ".join(rng.choice(PROMPT_WORDS) for _ in range(3))
        if prompt not in avoid and prompt not in prompts:
            prompts.append(prompt)
    path.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in prompts))
    return set(prompts)


def sample(policy: Path, prompts: Path, out: Path, seed: int) -> list[dict]:
    run_cli("policy_trainer.cli", "sample", "--policy", str(policy), "--prompts", str(prompts),
            "--out", str(out), "--k", str(K), "--max-new-tokens", str(MAX_NEW_TOKENS),
            "--temperature", "1.0", "--seed", str(seed), "--batch-size", "32")  # fmt: skip
    return [json.loads(line) for line in out.read_text().splitlines()]


def build_tiny_encoder(out: Path) -> Path:
    """The reward model's base: a seeded 2-layer BERT encoder (hidden 32), MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(out)
    return out


def sign_in(invitation: str) -> httpx.Client:
    """A rater's browser: opens the invitation link and keeps the cookie it sets."""
    client = httpx.Client(timeout=HTTP_TIMEOUT_S, follow_redirects=True)
    response = client.get(invitation)
    assert response.status_code == 200, response.text
    assert client.cookies, "the invitation link set no cookie"
    return client


def rank_next(client: httpx.Client, base_url: str, sampled: dict[str, list[str]]) -> bool:
    """One task page: fetch the next view, rank its completions by the rule as they are shown,
    and submit the ranks in the item's ORIGINAL order, as the page's script does. False when
    nothing is left for this rater."""
    response = client.get(f"{base_url}/api/campaigns/{CAMPAIGN}/next")
    if response.status_code == 204:
        return False
    assert response.status_code == 200, response.text
    view = response.json()
    original = sampled[view["prompt"]]
    shown = view["completions"]
    assert sorted(view["order"]) == list(range(K))
    assert shown == [original[index] for index in view["order"]]
    shown_ranks = competition_ranks(rule_counts(shown))
    ranks = [0] * K
    for place, index in enumerate(view["order"]):
        ranks[index] = shown_ranks[place]
    body = {
        "ranks": {criterion: ranks for criterion in view["criteria"]},
        "skipped": False,
        "skip_reason": None,
        "flags": {},
        "confidence": 4 if len(set(ranks)) > 1 else 1,
        "comment": "",
        "time_spent_ms": 1500,
    }
    submitted = client.post(f"{base_url}/api/views/{view['view_id']}/judgement", json=body)
    assert submitted.status_code == 201, submitted.text
    return True


def test_rankings_by_a_rule_train_a_reward_model_that_orders_unseen_completions_by_it(
    tmp_path: Path,
):
    # 1. K completions per prompt from a tiny seeded policy.
    policy = build_word_level_lm(tmp_path / "policy")
    train_prompts = write_prompts(tmp_path / "prompts.jsonl", TRAIN_PROMPTS, seed=1)
    samples = sample(policy, tmp_path / "prompts.jsonl", tmp_path / "samples.jsonl", seed=1)
    sampled = {line["prompt"]: line["completions"] for line in samples}
    assert set(sampled) == train_prompts and all(len(c) == K for c in sampled.values())

    # 2. A campaign of them, two invited raters, and the ranking app serving it.
    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    server = FeedbackServer(db=db, admin_key=ADMIN_KEY, log_dir=tmp_path)
    items = str(tmp_path / "samples.jsonl")
    run_cli("reward_service.cli", "feedback", "campaign", "create", CAMPAIGN,
            "--items", items, "--criteria", "overall", "--db", db)  # fmt: skip
    invitations = {}
    for name in RATERS:
        printed = run_cli("reward_service.cli", "feedback", "invite", name, "--db", db,
                          "--base-url", server.url)  # fmt: skip
        invitations[name] = printed.strip().splitlines()[-1]
        assert invitations[name].startswith(f"{server.url}/join/"), printed
    server.start()
    try:
        # 3. The raters sign in through their links and take turns until neither has work.
        clients = {name: sign_in(invitations[name]) for name in RATERS}
        judged = dict.fromkeys(RATERS, 0)
        working = list(RATERS)
        while working:
            for name in list(working):
                if rank_next(clients[name], server.url, sampled):
                    judged[name] += 1
                else:
                    working.remove(name)
        for client in clients.values():
            client.close()
        assert sum(judged.values()) == TRAIN_PROMPTS and all(judged.values()), judged

        # 4. The export, which is what the raters meant: the rule's ranks in the original order.
        export = tmp_path / "rankings.jsonl"
        run_cli("reward_service.cli", "feedback", "export", "--campaign", CAMPAIGN,
                "--format", "rankings", "--out", str(export), "--db", db)  # fmt: skip
    finally:
        server.stop()
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert sorted(row["prompt"] for row in rows) == sorted(sampled)
    for row in rows:
        assert row["completions"] == sampled[row["prompt"]]
        assert row["ranking"] == competition_ranks(rule_counts(row["completions"])), row
        assert row["criterion"] == "overall" and row["rater"] in RATERS

    # 5. A tiny reward model trained on the export, with the training command's fast settings.
    model = tmp_path / "reward-model"
    run_cli("reward_service.cli", "train", str(export), "--out", str(model),
            "--base", str(build_tiny_encoder(tmp_path / "base")), "--objective", "pairwise",
            "--epochs", "2", "--learning-rate", "2e-3", "--batch-size", "16",
            "--max-length", "32", "--warmup-ratio", "0", "--seed", "0")  # fmt: skip

    # 6. Served, it scores completions of prompts it never saw, drawn with another seed.
    held_out_prompts = tmp_path / "held-out-prompts.jsonl"
    write_prompts(held_out_prompts, HELD_OUT_PROMPTS, seed=2, avoid=train_prompts)
    held_out = sample(policy, held_out_prompts, tmp_path / "held-out.jsonl", seed=2)
    reward_server = start_server(["--model", f"rm={model}"], tmp_path)
    try:
        with RewardClient(reward_server.url) as client:
            rewards = client.score(
                prompts=[line["prompt"] for line in held_out for _ in range(K)],
                completions=[c for line in held_out for c in line["completions"]],
            )
    finally:
        reward_server.stop()

    # One pair per held-out item with a strict order (the first completion of most occurrences
    # against the first of fewest): pairs of different items share no completion, so under
    # chance they are independent fair coins and the count right is Binomial(n, 1/2). A tie in
    # the model's rewards counts as wrong.
    right = n = all_right = all_pairs = 0
    for index, line in enumerate(held_out):
        counts = rule_counts(line["completions"])
        scores = rewards[index * K : (index + 1) * K]
        if len(set(counts)) == 1:
            continue
        best, worst = counts.index(max(counts)), counts.index(min(counts))
        n += 1
        right += scores[best] > scores[worst]
        for i, j in combinations(range(K), 2):
            if counts[i] != counts[j]:
                all_pairs += 1
                all_right += (scores[i] - scores[j]) * (counts[i] - counts[j]) > 0
    # The smallest count right whose chance probability (P[X >= threshold], X ~ B(n, 1/2)) is
    # below CHANCE_P_VALUE: 60 of the 85 pairs this seeded run has (71%), where the model gets
    # them all right; 0 of 85 when the raters rank by the reverse rule.
    threshold = next(t for t in range(n + 1) if binom.sf(t - 1, n, 0.5) < CHANCE_P_VALUE)
    assert n >= 60, f"only {n} held-out items have a strict order by the rule"
    assert right >= threshold, (
        f"the trained reward model orders {right} of {n} held-out pairs by the rule "
        f"({right / n:.2f}; chance would reach {threshold} with p < {CHANCE_P_VALUE}); "
        f"all strictly ordered pairs: {all_right}/{all_pairs}"
    )
