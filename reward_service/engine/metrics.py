"""Prometheus metrics, one registry per server so that several servers can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "reward_requests",
            "Requests by transport, route and status.",
            ["transport", "route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "reward_request_latency_seconds",
            "Time from request received to response ready.",
            ["transport", "route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge(
            "reward_queue_depth", "Items waiting for a batch.", ["model"], registry=r
        )
        self.admitted_items = Gauge(
            "reward_admitted_items", "Items admitted and not yet answered.", ["model"], registry=r
        )
        self.batch_size = Histogram(
            "reward_batch_size",
            "Items per forward pass.",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_padded_tokens = Histogram(
            "reward_batch_padded_tokens",
            "Padded tokens (longest x items) per forward pass.",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.inference_time = Histogram(
            "reward_inference_seconds",
            "Forward pass and reward mapping time per batch.",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.items_scored = Counter("reward_items_scored", "Items scored.", ["model"], registry=r)
        self.items_truncated = Counter(
            "reward_items_truncated",
            "Items truncated to the model's max_length.",
            ["model"],
            registry=r,
        )
        self.items_expired = Counter(
            "reward_items_expired",
            "Items dropped unscored because their deadline had passed.",
            ["model"],
            registry=r,
        )
        self.items_cancelled = Counter(
            "reward_items_cancelled",
            "Items dropped unscored because their caller went away (disconnected or cancelled).",
            ["model"],
            registry=r,
        )
        self.http_read_timeouts = Counter(
            "reward_http_read_timeouts",
            "REST connections closed because a request's headers or body did not arrive in time.",
            ["phase"],
            registry=r,
        )
        self.http_body_bytes_in_flight = Gauge(
            "reward_http_body_bytes_in_flight",
            "Bytes reserved for REST request bodies still being received (each body's "
            "Content-Length, or the body limit for a chunked one).",
            registry=r,
        )
        self.http_body_budget_refusals = Counter(
            "reward_http_body_budget_refusals",
            "REST requests refused (429) because the bodies being received already filled "
            "--max-body-bytes-in-flight.",
            registry=r,
        )
        self.items_non_finite = Counter(
            "reward_items_non_finite",
            "Items whose reward came out NaN or infinite, failed instead of answered.",
            ["model"],
            registry=r,
        )
        self.requests_rejected = Counter(
            "reward_requests_rejected",
            "Requests refused because the queue was full.",
            ["model"],
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
