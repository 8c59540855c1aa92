"""`policy-trainer sample`: K completions per prompt from a tiny seeded policy, sampled as PPO
samples, scored on a real reward server; and `read_samples`, which reads that file and a PPO
run's samples.jsonl back for the ranking app."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from policy_trainer import checkpoint as checkpoints
from policy_trainer.config import PPOConfig, SampleOptions
from policy_trainer.models import load_policy
from policy_trainer.prompts import encode_prompts, read_prompts
from policy_trainer.rollout import generate_responses
from policy_trainer.run_log import SAMPLES_FILENAME, RunLog
from policy_trainer.sample import policy_step, sample_prompts
from reward_service.client import RewardClient
from reward_service.errors import DataError
from reward_service.feedback.samples import SampledPrompt, read_samples

PROMPTS = [
    {"prompt": "The movie was"},
    {"messages": [{"role": "user", "content": "What did you think of the film?"}]},
    {"prompt": "One of the best"},
    {"prompt": "A dull,"},
    {"prompt": "I loved"},
]
# What the reward model is sent for each, as PPO sends it: chat prompts as "role: content" lines.
REWARD_PROMPTS = [
    "The movie was",
    "user: What did you think of the film?\nassistant: ",
    "One of the best",
    "A dull,",
    "I loved",
]
K, SEED, MAX_NEW_TOKENS, BATCH_SIZE = 4, 3, 10, 2


@pytest.fixture(scope="module")
def policy(tiny_causal_lm_factory) -> Path:
    # Its generation_config.json asks for top-k 1 (greedy): followed, a prompt's K samples would
    # all be the same. PPO samples from the whole softmax whatever a folder asks; so must this.
    return tiny_causal_lm_factory(
        "sample-policy", generation_config={"do_sample": True, "top_k": 1}
    )


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "prompts.jsonl"
    path.write_text("".join(json.dumps(prompt) + "\n" for prompt in PROMPTS))
    return path


@pytest.fixture(scope="module")
def reward_url(tiny_model_factory, server_factory) -> str:
    folder = tiny_model_factory("sample-sentiment", labels=["NEGATIVE", "POSITIVE"])
    return server_factory(["--model", f"sentiment={folder}"]).url


def run_sample(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "policy_trainer.cli", "sample", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def sample_args(policy: Path, prompts_file: Path, out: Path) -> list[str]:
    return ["--policy", str(policy), "--prompts", str(prompts_file), "--out", str(out),
            "--k", str(K), "--seed", str(SEED), "--max-new-tokens", str(MAX_NEW_TOKENS),
            "--batch-size", str(BATCH_SIZE)]  # fmt: skip


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def scored_file(policy, prompts_file, reward_url, tmp_path_factory) -> Path:
    """`policy-trainer sample ... --reward-url URL`, run as a user runs it."""
    out = tmp_path_factory.mktemp("sampled") / "samples.jsonl"
    completed = run_sample(*sample_args(policy, prompts_file, out), "--reward-url", reward_url)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == str(out)
    return out


def test_each_prompt_gets_k_completions_with_the_settings_that_drew_them(
    scored_file: Path, policy: Path
):
    lines = read_lines(scored_file)
    assert [line["prompt"] for line in lines] == REWARD_PROMPTS
    for line in lines:
        assert len(line["completions"]) == K
        assert all(isinstance(completion, str) for completion in line["completions"])
        # Sampled from the whole distribution of a random 300-token model: K samples of 10
        # tokens that all agree would be a near impossibility (and certain under top-k 1).
        assert len(set(line["completions"])) > 1, line["completions"]
        assert line["source"] == {
            "policy": str(policy.resolve()),
            "step": None,  # a plain folder, not a PPO run's policy
            "temperature": PPOConfig().temperature,  # PPO's own default
            "max_new_tokens": MAX_NEW_TOKENS,
            "max_prompt_tokens": None,
            "seed": SEED,
            "k": K,
            "batch_size": BATCH_SIZE,
        }


def test_model_scores_are_what_the_reward_server_answers_for_those_texts(
    scored_file: Path, reward_url: str
):
    lines = read_lines(scored_file)
    prompts = [line["prompt"] for line in lines for _ in range(K)]
    completions = [completion for line in lines for completion in line["completions"]]
    with RewardClient(reward_url) as client:
        expected = client.score(prompts=prompts, completions=completions)
    # Scored in other batches than these: a reward moves in its last float32 bits with what
    # shares its batch (docs/serving.md, "Determinism"); 1e-5 is far below what tells two
    # completions apart.
    scores = [score for line in lines for score in line["model_scores"]]
    assert scores == pytest.approx(expected, rel=0, abs=1e-5)


def test_the_same_seed_gives_the_same_file_and_scoring_does_not_change_the_draw(
    scored_file: Path, policy: Path, prompts_file: Path, tmp_path: Path
):
    again = tmp_path / "again.jsonl"
    completed = run_sample(*sample_args(policy, prompts_file, again))
    assert completed.returncode == 0, completed.stderr
    unscored = read_lines(again)
    assert all("model_scores" not in line for line in unscored)
    scored = read_lines(scored_file)
    for line in scored:
        del line["model_scores"]
    assert unscored == scored
    # Another seed, another draw (in-process: the same function the command calls).
    options = SampleOptions(k=K, seed=SEED + 1, max_new_tokens=MAX_NEW_TOKENS, batch_size=2)
    other = sample_prompts(policy, prompts_file, options, progress=False)
    assert [line["completions"] for line in other] != [line["completions"] for line in scored]


def test_completions_are_what_ppos_rollout_draws_with_the_same_seed(
    scored_file: Path, policy: Path, prompts_file: Path
):
    # PPO's path, spelled out: prompts read and encoded as PPO does, each prompt's K rows side
    # by side, generate_responses at PPO's temperature with the seed set before the first batch.
    model, tokenizer = load_policy(policy)
    encoded = encode_prompts(read_prompts(prompts_file), tokenizer)
    torch.manual_seed(SEED)
    expected = []
    for start in range(0, len(encoded), BATCH_SIZE):
        rows = [
            prompt.input_ids for prompt in encoded[start : start + BATCH_SIZE] for _ in range(K)
        ]
        generation = generate_responses(
            model,
            tokenizer,
            rows,
            max_new_tokens=MAX_NEW_TOKENS,
            temperature=PPOConfig().temperature,
        )
        expected += [generation.completions[i : i + K] for i in range(0, len(rows), K)]
    assert [line["completions"] for line in read_lines(scored_file)] == expected


def test_unusable_settings_and_inputs_exit_2_with_a_message(
    policy: Path, prompts_file: Path, tmp_path: Path
):
    out = tmp_path / "out.jsonl"
    inputs = ["--policy", str(policy), "--prompts", str(prompts_file), "--out", str(out)]
    completed = run_sample(*inputs, "--k", "1")
    assert completed.returncode == 2
    assert "policy-trainer sample: invalid sampling settings" in completed.stderr
    assert "k" in completed.stderr.splitlines()[-1]
    missing = tmp_path / "absent.jsonl"
    completed = run_sample("--policy", str(policy), "--prompts", str(missing), "--out", str(out))
    assert completed.returncode == 2 and str(missing) in completed.stderr
    assert not out.exists()


# --- the step a policy folder was saved at ------------------------------------------------------


def test_a_ppo_runs_final_policy_records_its_last_checkpoint_step(policy: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    RunLog(run_dir).write_run_info({"config": {}, "policy": str(policy)})
    for step in (50, 100):
        folder = checkpoints.begin_checkpoint(run_dir, step)
        torch.save({"step": step}, folder / checkpoints.STATE_FILENAME)
        checkpoints.finish_checkpoint(run_dir, step, keep=2)
    shutil.copytree(policy, run_dir / "policy")
    assert policy_step(run_dir / "policy") == 100
    assert policy_step(policy) is None


def test_a_trainer_checkpoint_folder_records_its_global_step(policy: Path, tmp_path: Path):
    folder = shutil.copytree(policy, tmp_path / "checkpoint-500")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 500}))
    assert policy_step(folder) == 500


# --- reading samples back ------------------------------------------------------------------------


def test_read_samples_reads_a_sample_file_back(scored_file: Path):
    written = read_lines(scored_file)
    assert read_samples(scored_file) == [
        SampledPrompt(line["prompt"], line["completions"], line["source"], line["model_scores"])
        for line in written
    ]
    # A campaign of smaller K takes each prompt's first K; a larger one can't be filled.
    assert [s.completions for s in read_samples(scored_file, k=2)] == [
        line["completions"][:2] for line in written
    ]
    assert [s.model_scores for s in read_samples(scored_file, k=2)] == [
        line["model_scores"][:2] for line in written
    ]
    with pytest.raises(DataError, match=rf"{scored_file.name}:1: 4 completions; at least 5"):
        read_samples(scored_file, k=5)


def ppo_samples_file(run_dir: Path) -> Path:
    """A PPO run folder's run.json and samples.jsonl, written by the trainer's own RunLog."""
    log = RunLog(run_dir)
    config = PPOConfig(max_new_tokens=20).model_dump(mode="json")
    log.write_run_info({"config": config, "policy": "/models/sft"})
    log.log_samples(10, [{"prompt": "a", "completion": " one", "score": 0.5},
                         {"prompt": "b", "completion": " two", "score": -1.0}])  # fmt: skip
    log.log_samples(20, [{"prompt": "a", "completion": " three", "score": 1.5},
                         {"prompt": "c", "completion": " four", "score": 0.0}])  # fmt: skip
    log.log_samples(30, [{"prompt": "a", "completion": " five", "score": 2.5},
                         {"prompt": "b", "completion": " six", "score": 3.0}])  # fmt: skip
    return run_dir / SAMPLES_FILENAME


def test_read_samples_groups_a_ppo_runs_samples_by_prompt(tmp_path: Path):
    path = ppo_samples_file(tmp_path / "run")
    source = {"policy": "/models/sft", "temperature": 0.7, "max_new_tokens": 20}
    # Without k: every prompt sampled at least twice, all its completions; "c" (once) left out.
    assert read_samples(path) == [
        SampledPrompt("a", [" one", " three", " five"], {**source, "steps": [10, 20, 30]},
                      [0.5, 1.5, 2.5]),
        SampledPrompt("b", [" two", " six"], {**source, "steps": [10, 30]}, [-1.0, 3.0]),
    ]  # fmt: skip
    # With k: prompts with at least k completions, their first (oldest) k.
    assert read_samples(path, k=3) == [
        SampledPrompt("a", [" one", " three", " five"], {**source, "steps": [10, 20, 30]},
                      [0.5, 1.5, 2.5]),
    ]  # fmt: skip
    assert [s.completions for s in read_samples(path, k=2)] == [
        [" one", " three"],
        [" two", " six"],
    ]


def test_read_samples_names_the_file_and_line_of_a_bad_line(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    good = {"prompt": "p", "completions": ["a", "b"], "source": {}}
    cases = {
        "{oops": r"bad.jsonl:2: not valid JSON",
        json.dumps({"prompt": "p", "completions": ["a"]}): r"bad.jsonl:2: 1 completions",
        json.dumps({**good, "model_scores": [1.0]}): r"bad.jsonl:2: 'model_scores' must be",
        json.dumps({**good, "model_scores": [1.0, "x"]}): r"bad.jsonl:2: 'model_scores' must",
        json.dumps({"completions": ["a", "b"]}): r"bad.jsonl:2: missing field 'prompt'",
    }
    for line, message in cases.items():
        bad.write_text(json.dumps(good) + "\n" + line + "\n")
        with pytest.raises(DataError, match=message):
            read_samples(bad)
    bad.write_text(json.dumps({"step": 1, "prompt": "p", "completion": "c", "score": 1}) + "\n"
                   + json.dumps({"step": 2, "prompt": "p", "score": 1}) + "\n")  # fmt: skip
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing field 'completion'"):
        read_samples(bad)
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: neither a sample file line"):
        read_samples(bad)


def test_reading_samples_needs_no_torch():
    code = (
        "import sys; import reward_service.feedback.samples; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
