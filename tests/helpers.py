"""Helpers that test files and fixtures share: tiny seeded models built from configs, real
servers on loopback ports, and a task PPO can learn on a CPU. Fixtures live in conftest.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from gated_server import (
    BATCHER_CRASH,
    FAILING_TOKEN,
    FORWARD_ALLOWED,
    FORWARD_PASSES,
    LARGEST_FORWARD,
    LOAD_HELD,
    read_number,
    write_atomically,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def minilm_folder() -> Path:
    from reward_service.training.base_encoder import minilm_folder as locate

    return locate()


def build_tiny_classifier(
    out: Path,
    *,
    labels: list[str],
    problem_type: str | None = None,
    reward_config: dict | None = None,
    seed: int = 0,
    architecture: str = "bert",
) -> Path:
    """A seeded 2-layer classifier with the MiniLM tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    id2label = dict(enumerate(labels))
    label2id = {label: index for index, label in id2label.items()}
    common = dict(
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
        problem_type=problem_type,
        vocab_size=30522,
    )
    torch.manual_seed(seed)
    if architecture == "distilbert":
        config = DistilBertConfig(
            dim=32, hidden_dim=64, n_layers=2, n_heads=4, max_position_embeddings=128, **common
        )
        model = DistilBertForSequenceClassification(config)
    else:
        config = BertConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            **common,
        )
        model = BertForSequenceClassification(config)
    # A random classifier barely separates inputs; scale the head so rewards differ visibly.
    with torch.no_grad():
        for parameter in model.classifier.parameters():
            parameter.mul_(20)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(out)
    if reward_config is not None:
        (out / "reward_config.json").write_text(json.dumps(reward_config))
    return out


def positive_logits(folder: Path, texts: list[str]) -> dict[str, float]:
    """Each text's POSITIVE logit (the `sentiment` preset's reward), by transformers directly and
    one text at a time: what a server must answer, computed without the server's code. For texts
    that fit the model untruncated."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return {
            text: model(**tokenizer(text, return_tensors="pt")).logits[0, 1].item()
            for text in texts
        }


# A tiny ChatML-style byte-level BPE tokenizer is trained on these lines for the tiny causal LMs.
TINY_LM_CORPUS = [
    "The movie was a delight from start to finish.",
    "A dull, lifeless film that never finds its footing.",
    "One of the best films of the year, funny and warm.",
    "The plot is thin and the acting is worse.",
    "A gorgeous, moving story about family and loss.",
    "I loved every minute of it.",
    "user: what did you think of the film? assistant: it was great fun.",
]
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tiny_bpe_tokenizer(*, eos_token: str, pad_token: str | None):
    """A byte-level BPE tokenizer with ChatML's special tokens and chat template, trained on the
    fly (vocab 300), as decoder models have them; `pad_token` None leaves it without one, as
    Llama's tokenizers are."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe_trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TINY_LM_CORPUS, bpe_trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=eos_token, pad_token=pad_token
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_causal_lm(
    out: Path,
    *,
    seed: int = 0,
    architecture: str = "llama",
    generation_config: dict | None = None,
) -> Path:
    """A seeded 2-layer causal LM (hidden 32) with a ChatML tokenizer trained on the fly (vocab
    300, eos = pad = ``<|im_end|>``, as in SmolLM2), saved as a Hugging Face folder. `architecture`
    "llama" has rotary positions, which a constant shift of every position leaves unchanged;
    "gpt2" has absolute position embeddings, which tell any misplaced position. A
    `generation_config` (GenerationConfig fields) is saved as the folder's
    generation_config.json, the sampling defaults a model ships with."""
    import torch
    from transformers import (
        GenerationConfig,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tokenizer = build_tiny_bpe_tokenizer(eos_token="<|im_end|>", pad_token="<|im_end|>")

    torch.manual_seed(seed)
    special = dict(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    if architecture == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tokenizer),
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=256,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
                **special,
            )
        )
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=256,
                tie_word_embeddings=True,
                **special,
            )
        )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if generation_config is not None:
        model.generation_config = GenerationConfig(**special, **generation_config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def tiny_grpo_config(output_dir: Path, **overrides):
    """TRL's GRPOConfig for a few CPU-cheap steps of a tiny policy: 4 completions a step (2 per
    prompt), each a few tokens, no saving, no reporting; `overrides` are GRPOConfig fields."""
    from trl import GRPOConfig

    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return GRPOConfig(**{**settings, **overrides})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# How long a test waits for something to happen before it fails. Only a bound for a failure:
# what a test checks never depends on how fast the machine is, and a busy machine that takes
# minutes to start a server or answer a request is slow, not wrong.
WAIT_S = 300.0
# The timeout of a test's own HTTP request, for the same reason (httpx's default is 5 s).
HTTP_TIMEOUT_S = 120.0


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    """Polls `condition` until it is true; fails naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.01)


class ServerGate:
    """The test's side of the gates of a server started with `gated=True` (gated_server.py).

    Forward passes are numbered from the server's start (warm-up included, every model); the
    test lets a number of them run and holds the rest, and a held pass waits until it is let
    through. A model's loading can be held too, from before the process starts.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def forward_passes(self) -> int:
        """Forward passes started so far (a held one included)."""
        return read_number(self.directory / FORWARD_PASSES) or 0

    def _allowed(self) -> int | None:
        return read_number(self.directory / FORWARD_ALLOWED)

    def hold_forward(self, after: int = 0) -> None:
        """From now on, `after` more forward passes run; the one after them waits."""
        write_atomically(self.directory / FORWARD_ALLOWED, str(self.forward_passes() + after))

    def allow_forward(self, passes: int = 1) -> None:
        """Lets `passes` more forward passes run, the held one first."""
        allowed = self._allowed()
        assert allowed is not None, "the forward gate is open"
        write_atomically(self.directory / FORWARD_ALLOWED, str(allowed + passes))

    def is_holding(self) -> bool:
        """Whether a forward pass waits at the gate."""
        allowed = self._allowed()
        return allowed is not None and self.forward_passes() > allowed

    def wait_until_held(self, timeout_s: float = WAIT_S) -> None:
        wait_for(self.is_holding, "a forward pass to reach the closed gate", timeout_s)

    def open_forward(self) -> None:
        """Every forward pass runs again, the held one first."""
        (self.directory / FORWARD_ALLOWED).unlink(missing_ok=True)

    def hold_load(self, model: str) -> None:
        (self.directory / LOAD_HELD.format(model=model)).touch()

    def release_load(self, model: str) -> None:
        (self.directory / LOAD_HELD.format(model=model)).unlink(missing_ok=True)

    def largest_forward(self) -> int:
        """The most padded tokens (rows x columns) of any forward pass so far."""
        return read_number(self.directory / LARGEST_FORWARD) or 0

    def fail_forward_on(self, token_id: int) -> None:
        """From now on, a forward pass whose batch holds `token_id` raises."""
        write_atomically(self.directory / FAILING_TOKEN, str(token_id))

    def crash_batcher(self) -> None:
        """The next batch a batching task takes raises instead (a bug in the loop, simulated)."""
        (self.directory / BATCHER_CRASH).touch()

    def open_all(self) -> None:
        self.open_forward()
        for held in self.directory.glob(LOAD_HELD.format(model="*")):
            held.unlink(missing_ok=True)


@dataclass
class RunningServer:
    process: subprocess.Popen
    port: int
    log_path: Path
    grpc_port: int = 0  # 0: gRPC disabled
    gate: ServerGate | None = None  # started with gated=True
    ca_file: Path | None = None  # served over TLS, with a certificate this CA file verifies

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            if self.gate is not None:  # a held pass or load would hold the shutdown too
                self.gate.open_all()
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def peak_rss(pid: int) -> Iterator[list[int]]:
    """The process's peak resident memory over the block; yields [peak bytes] (filled at exit).
    The kernel's own high-water mark (VmHWM), reset on entry: no peak slips between samples."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak to the current RSS
    peak = [0]
    try:
        yield peak
    finally:
        status = Path(f"/proc/{pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
        peak[0] = int(kib) * 1024


def processes_naming(text: str) -> list[int]:
    """PIDs of this machine's processes (but this one) whose command line holds `text`: e.g. a
    Ray session's folder, on the command line of each of its processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in command:
            found.append(int(entry.name))
    return found


def rss(pid: int) -> int:
    """The process's resident memory now, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        * 1024
    )


def metric(server: RunningServer, name: str, **labels: str) -> float:
    """One sample of the server's GET /metrics; 0 when the labelled series does not exist yet."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics", timeout=HTTP_TIMEOUT_S).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def start_server(
    args: list[str],
    log_dir: Path,
    *,
    wait_ready: bool = True,
    timeout_s: float = WAIT_S,
    port: int | None = None,
    gated: bool = False,
    held_loads: Sequence[str] = (),
    ca_file: Path | None = None,
) -> RunningServer:
    """`reward-service serve` in a subprocess on a free loopback port (or `port`, to restart a
    stopped server where its clients expect it), as a user would run it. `gated`: through
    gated_server.py, with `server.gate` to hold its forward passes, and its loading of the
    models named in `held_loads` held from the start. `ca_file`: the server is given a TLS
    certificate (in `args`) that this CA file verifies."""
    port = port or free_port()
    # Every server gets its own gRPC port too, so that servers never contend for the default.
    if "--grpc-port" not in args:
        args = [*args, "--grpc-port", str(free_port())]
    grpc_port = int(args[args.index("--grpc-port") + 1])
    log_path = log_dir / f"server-{port}.log"
    env = {**os.environ, "REWARD_SERVICE_CACHE": str(log_dir / "cache"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "reward_service.cli"]
    gate = None
    if gated or held_loads:
        gate = ServerGate(log_dir / f"gate-{port}")
        for model in held_loads:
            gate.hold_load(model)
        command = [
            sys.executable,
            str(Path(__file__).with_name("gated_server.py")),
            str(gate.directory),
        ]
    command += ["serve", "--port", str(port), *args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
        )
    server = RunningServer(process, port, log_path, grpc_port, gate, ca_file)
    if wait_ready:
        wait_until_ready(server, timeout_s)
    return server


def wait_until_ready(server: RunningServer, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            verify = ssl.create_default_context(cafile=server.ca_file) if server.ca_file else True
            ready = httpx.get(f"{server.url}/health/ready", timeout=10, verify=verify)
            if ready.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready after {timeout_s} s:\n{server.log()}")


# --- a task PPO can learn in a few dozen steps on a CPU ------------------------------------------
# A tiny Llama over a word-level vocabulary writes a few words after prompts like "the movie
# was"; a tiny classifier, trained here, scores P(the completion contains "good"). At the start
# about one completion in five says "good"; a policy that learns says it almost every time.

PPO_WORDS = "good bad movie film the a is was plot acting very not and story it this".split()
PPO_TARGET_WORD = "good"
PPO_PROMPTS = [
    "the movie was",
    "this film is",
    "the plot",
    "the acting was",
    "it is a",
    "this story",
    "a film",
    "the story is",
]


def build_word_level_lm(out: Path, *, words: list[str] = PPO_WORDS, seed: int = 0) -> Path:
    """A seeded 2-layer Llama (hidden 32) whose tokens are whole words (eos = pad = ``<eos>``)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{word: index + 2 for index, word in enumerate(words)}}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=1,
    )
    out.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def train_word_classifier(out: Path, *, target: str = PPO_TARGET_WORD, seed: int = 0) -> Path:
    """A tiny BERT classifier trained to tell prompt + completion texts that contain `target`
    from those that don't; served, its reward is P(POSITIVE) = P(contains `target`)."""
    import random

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    mapping = {"outputs": ["POSITIVE"], "activation": "softmax"}
    build_tiny_classifier(out, labels=["NEGATIVE", "POSITIVE"], seed=seed, reward_config=mapping)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    rng = random.Random(seed)
    others = [word for word in PPO_WORDS if word != target]
    texts, labels = [], []
    for index in range(512):
        words = [rng.choice(others) for _ in range(rng.randint(1, 8))]
        if index % 2:
            words[rng.randrange(len(words))] = target
        texts.append(f"{rng.choice(PPO_PROMPTS)} {' '.join(words)}")
        labels.append(index % 2)
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    targets = torch.tensor(labels)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: fastest on one thread, and steady on a busy machine
    try:
        for _ in range(60):
            rows = torch.randint(0, len(texts), (64,))
            logits = model(
                input_ids=encoded["input_ids"][rows], attention_mask=encoded["attention_mask"][rows]
            ).logits
            loss = torch.nn.functional.cross_entropy(logits, targets[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(**encoded).logits.argmax(-1) == targets).float().mean())
    assert accuracy > 0.95, f"the task's classifier did not learn its word ({accuracy:.2f})"
    model.save_pretrained(out, safe_serialization=True)
    return out


def poison_word(folder: Path, word: str) -> Path:
    """Makes `word`'s token embedding NaN in the classifier saved in `folder`: any text holding
    the word gets a NaN reward, any other a finite one, whatever shares its batch (attention never
    mixes the rows of a batch)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    token_ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    assert len(token_ids) == 1, f"{word!r} is not one token of this vocabulary"
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.get_input_embeddings().weight[token_ids[0]] = float("nan")
    model.save_pretrained(folder, safe_serialization=True)
    return folder


# Settings under which the task is learnt in about ten steps (a tiny model takes a large step).
PPO_TASK_SETTINGS = {
    "batch_size": 32,
    "num_mini_batches": 2,
    "max_new_tokens": 6,
    "temperature": 1.0,
    "learning_rate": 3e-3,
    "lr_schedule": "constant",
}


@dataclass
class PPOTask:
    policy: Path
    classifier: Path
    prompts: Path

    def cli_args(self, reward_url: str, run_dir: Path, **settings) -> list[str]:
        """`policy-trainer ppo` arguments for this task; `settings` (PPOConfig fields) as flags."""
        flags = [
            f"--{name.replace('_', '-')}={value}"
            for name, value in {**PPO_TASK_SETTINGS, **settings}.items()
        ]
        return [
            "ppo",
            "--policy",
            str(self.policy),
            "--reward-url",
            reward_url,
            "--prompts",
            str(self.prompts),
            "--output-dir",
            str(run_dir),
            *flags,
        ]


# --- chat markup (tests/test_markup.py, tests/test_openrlhf.py) ---------------------------------

CLEAN_PROMPT = "Was the film good?"
CLEAN_COMPLETION = "Yes, I loved it."

# How each family's chat template, then its tokenizer's decode with skip_special_tokens=False,
# writes a one-turn conversation and its answer (the spellings of each family's own template).
MARKED_UP = {
    "chatml": (
        f"<|im_start|>user\n{CLEAN_PROMPT}<|im_end|>\n<|im_start|>assistant\n",
        f"{CLEAN_COMPLETION}<|im_end|>\n<|endoftext|><|endoftext|>",
    ),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        f"{CLEAN_PROMPT}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        f"{CLEAN_COMPLETION}<|eot_id|><|finetune_right_pad_id|>",
    ),
    "llama2": (f"<s>[INST] {CLEAN_PROMPT} [/INST]", f" {CLEAN_COMPLETION}</s>"),
    "special-tokens": (f"<s>{CLEAN_PROMPT}", f"{CLEAN_COMPLETION}</s><pad><pad>"),
}
