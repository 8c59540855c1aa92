"""The baseline the reward service is measured against: one forward per request, no batching.

This is the shape most tutorials and OpenRLHF's `serve_rm` take: a FastAPI route that tokenizes
the request's texts with the transformers tokenizer and runs the model on them alone. The route is
a plain `def`, so FastAPI runs it in its threadpool and concurrent requests run concurrent
forwards. Same model, truncation length and reward logit as the service (the mapping's scale and
normalisation, which cost nothing, are left out).

    python benchmarks/naive_server.py --port 8001 [--model DIR] [--device cpu] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ScoreRequest(BaseModel):
    texts: list[str]


class ScoreResponse(BaseModel):
    rewards: list[float]


def create_app(model_dir: Path, device: str, dtype: str) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=DTYPES[dtype])
    model.eval().to(device)
    config_path = model_dir / "reward_config.json"
    reward_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    label = (reward_config.get("outputs") or [{"label": "POSITIVE"}])[0]["label"]
    reward_index = model.config.label2id.get(label, 0 if model.config.num_labels == 1 else 1)
    max_length = reward_config.get("max_length") or tokenizer.model_max_length
    app = FastAPI(title="Naive reward server")

    @app.post("/v1/score", response_model=ScoreResponse)
    def score(request: ScoreRequest) -> ScoreResponse:
        inputs = tokenizer(
            request.texts,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        with torch.inference_mode():
            logits = model(**inputs).logits
        return ScoreResponse(rewards=logits[:, reward_index].float().cpu().tolist())

    @app.get("/health/ready")
    def ready() -> dict:
        return {"status": "ready"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", help="Model folder (default: the service's default model).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.model:
        model_dir = Path(args.model)
    else:
        from reward_service.cache import default_cache_dir
        from reward_service.training.default_model import ensure_default_model

        model_dir = ensure_default_model(default_cache_dir())
    app = create_app(model_dir, args.device, args.dtype)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
