"""PPO step time with the reward model served remotely versus the same classifier in-process.

    flock /tmp/rlhf-cpu.lock .venv/bin/python benchmarks/ppo_step.py [--steps 10] [--layers 6]
        [--hidden 384] [--vocab 16384] [--batch-size 16] [--prompt-tokens 16] [--new-tokens 48]
        [--ppo-epochs 4] [--mini-batches 1] [--reward-model DIR] [--threads 1]

A tiny Llama policy is built from a config (default about 17 M parameters) with a word-level
tokenizer whose words are whole words of the reward model's own vocabulary, so a policy token is
one word the reward model reads. Prompts are --prompt-tokens seeded words each. The reward model
is the MiniLM-L6 encoder with a fresh head (the default reward model's architecture and cost;
its scores mean nothing here) unless --reward-model names a folder.

Two PPO trainers with the same settings and seed take steps in turns: one scores each batch on
`reward-service serve` over loopback HTTP through the client, the other calls the same
classifier in-process (the server's own code path: format, tokenize, pad, forward, map; one
forward per batch, as the server batches it). Both overlap scoring with the rollout's forward
passes the same way. Taking turns makes a neighbour's load slow both alike. Printed: the median
seconds per step after the first, split into generate / rollout forward passes / scoring (the
call, the trainer's wait for it, and how much of it overlapped compute) / train, and the ratio
of the remote to the in-process step time (target: <= 1.05).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PHASES = (
    "generate_s",
    "rollout_forward_s",
    "score_s",
    "score_wait_s",
    "score_overlap_s",
    "train_s",
    "step_s",
)
PROMPT_COUNT = 256
SEED = 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="PPO steps per mode (first dropped)")
    parser.add_argument("--layers", type=int, default=6, help="policy layers")
    parser.add_argument("--hidden", type=int, default=384, help="policy hidden size")
    parser.add_argument("--heads", type=int, default=6, help="policy attention heads")
    parser.add_argument("--vocab", type=int, default=16384, help="policy vocabulary size")
    parser.add_argument("--batch-size", type=int, default=16, help="rollouts per step")
    parser.add_argument("--prompt-tokens", type=int, default=16, help="prompt length in tokens")
    parser.add_argument("--new-tokens", type=int, default=48, help="max new tokens per response")
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--mini-batches", type=int, default=1, help="minibatches per PPO epoch")
    parser.add_argument("--value-model", choices=["separate", "shared"], default="separate")
    parser.add_argument("--reward-model", type=Path, help="folder (default: MiniLM-L6, new head)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the trainer and of the reward server each (default 1: on a small "
        "machine, more threads than cores stall; the two processes get a core each)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    return parser.parse_args()


def reward_vocabulary_words(reward_folder: Path, count: int) -> list[str]:
    """`count` whole, alphabetic words from the reward model's tokenizer vocabulary."""
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(reward_folder).get_vocab()
    words = sorted(word for word in vocab if word.isalpha() and word.isascii() and len(word) > 1)
    if len(words) < count:
        raise SystemExit(f"the reward model's vocabulary has only {len(words)} whole words")
    return random.Random(SEED).sample(words, count)


def build_policy(out: Path, words: list[str], args: argparse.Namespace) -> int:
    """A seeded Llama over a word-level vocabulary (eos = pad = <eos>); returns its size."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{word: index + 2 for index, word in enumerate(words)}}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>"
    )
    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=1,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return sum(parameter.numel() for parameter in model.parameters())


def write_prompts(path: Path, words: list[str], length: int) -> None:
    rng = random.Random(SEED)
    lines = [" ".join(rng.choice(words) for _ in range(length)) for _ in range(PROMPT_COUNT)]
    path.write_text("".join(json.dumps({"prompt": line}) + "\n" for line in lines))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def reward_server(folder: Path, threads: int) -> Iterator[str]:
    """`reward-service serve` on a loopback port, as a user runs it; yields its URL."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "reward_service.cli",
        "serve",
        "--model",
        f"rm={folder}",
        "--port",
        str(port),
        "--grpc-port",
        "0",
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the reward server exited with {process.returncode}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{url}/health/ready", timeout=2) as response,
            ):
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the reward server did not get ready")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def in_process_scorer(folder: Path):
    """The served model's scoring path, called directly: (prompts, completions) -> scores."""
    from reward_service.model.inputs import format_inputs
    from reward_service.model.loading import load_model
    from reward_service.model.spec import ModelSpec

    model = load_model(ModelSpec(name="rm", source=str(folder)))

    def score(prompts: list[str], completions: list[str]) -> list[float]:
        inputs = format_inputs(model.mapping, prompts=prompts, completions=completions)
        features = model.encoder.pad(model.encoder.encode(inputs))
        return model.resolved.map_logits(model.backend.forward(features)).tolist()

    return score


def main() -> int:
    args = parse_args()
    import torch

    from policy_trainer.config import PPOConfig
    from policy_trainer.prompts import read_prompts
    from policy_trainer.rollout import RemoteReward
    from policy_trainer.trainer import PPOTrainer
    from reward_service.training.base_encoder import minilm_folder
    from reward_service.training.default_model import build_untrained_sentiment_model

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ppo-bench-") as scratch:
        root = Path(scratch)
        reward_folder = args.reward_model
        if reward_folder is None:
            reward_folder = root / "reward-model"
            build_untrained_sentiment_model(minilm_folder(), reward_folder)
        words = reward_vocabulary_words(reward_folder, args.vocab - 2)
        policy_parameters = build_policy(root / "policy", words, args)
        write_prompts(root / "prompts.jsonl", words, args.prompt_tokens)
        prompts = read_prompts(root / "prompts.jsonl")
        config = PPOConfig(
            steps=args.steps,
            seed=SEED,
            batch_size=args.batch_size,
            num_mini_batches=args.mini_batches,
            ppo_epochs=args.ppo_epochs,
            max_new_tokens=args.new_tokens,
            temperature=1.0,
            checkpoint_every=0,
            samples_per_log=0,
            value_model=args.value_model,
        )

        with reward_server(reward_folder, args.threads) as url:
            remote = RemoteReward(url)
            scorers = {"remote": remote, "in-process": in_process_scorer(reward_folder)}
            trainers = {
                mode: PPOTrainer(
                    config,
                    policy_source=root / "policy",
                    prompts=prompts,
                    score=scorer,
                    run_dir=root / mode,
                )
                for mode, scorer in scorers.items()
            }
            results: dict[str, list[dict]] = {mode: [] for mode in trainers}
            for step in range(1, args.steps + 1):
                # Take turns, the order alternating, so that neither always goes first.
                order = list(trainers) if step % 2 else list(reversed(trainers))
                for mode in order:
                    metrics = trainers[mode].ppo_step(step)
                    results[mode].append({phase: metrics[phase] for phase in PHASES})
                    print(f"step {step} {mode:10s} {metrics['step_s']:.3f} s", file=sys.stderr)
            remote.close()
            for trainer in trainers.values():
                trainer.scorer.close()

    medians = {
        mode: {phase: statistics.median(entry[phase] for entry in rows[1:]) for phase in PHASES}
        for mode, rows in results.items()
    }
    pairs = zip(results["remote"][1:], results["in-process"][1:], strict=True)
    ratios = [remote["step_s"] / in_process["step_s"] for remote, in_process in pairs]
    ratio = medians["remote"]["step_s"] / medians["in-process"]["step_s"]
    print_table(args, policy_parameters, medians, ratio, statistics.median(ratios))
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads; load average "
        f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "medians": medians,
                    "ratio": ratio,
                    "per_step": results,
                },
                indent=2,
            )
        )
    print(
        f"{'PASS' if ratio <= 1.05 else 'FAIL'}: remote / in-process step time {ratio:.3f} "
        "(target <= 1.05)"
    )
    return 0


def print_table(
    args: argparse.Namespace, policy_parameters: int, medians: dict, ratio: float, step_ratio: float
) -> None:
    size_m = policy_parameters / 1e6
    print(
        f"PPO step, median seconds over steps 2-{args.steps}: policy {size_m:.1f}"
        f" M parameters ({args.layers} layers, hidden {args.hidden}, vocab {args.vocab}), batch "
        f"{args.batch_size}, {args.prompt_tokens}-token prompts, {args.new_tokens} new tokens, "
        f"{args.ppo_epochs} epochs x {args.mini_batches} minibatch(es), "
        f"{args.value_model} value model\n"
    )
    header = (
        "reward",
        "step",
        "generate",
        "forward",
        "score call",
        "score wait",
        "overlapped",
        "train",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for mode, values in medians.items():
        cells = [
            values[phase]
            for phase in (
                "step_s",
                "generate_s",
                "rollout_forward_s",
                "score_s",
                "score_wait_s",
                "score_overlap_s",
                "train_s",
            )
        ]
        print(f"| {mode} | " + " | ".join(f"{cell:.3f}" for cell in cells) + " |")
    print(
        f"\nremote / in-process: {ratio:.3f} (ratio of medians); "
        f"{step_ratio:.3f} (median of per-step ratios)"
    )


if __name__ == "__main__":
    sys.exit(main())
