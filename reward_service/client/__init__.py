"""The reward service's client: one API, sync and async, over HTTP and gRPC.

    from reward_service.client import RewardClient
    with RewardClient("http://127.0.0.1:8000") as client:
        rewards = client.score(texts=["great movie"])

`RewardClient` / `AsyncRewardClient` share `BaseRewardClient` (base.py: configuration, request
splitting, retry policy, endpoint choice); transports are http_transport.py and grpc_transport.py;
`RewardFunction` and `AsyncRewardFunction` (trl.py) plug the clients into TRL's GRPOTrainer and
RLOOTrainer.
"""

from reward_service.client.async_client import AsyncRewardClient
from reward_service.client.base import ScoreResult, backoff_delay_s
from reward_service.client.contract import ClientConfig
from reward_service.client.errors import (
    BadRequest,
    DeadlineExceeded,
    ModelNotFound,
    NonFiniteReward,
    RewardClientError,
    ServerError,
    Unauthorized,
    Unavailable,
    UnexpectedResponse,
    UntrustedServer,
)
from reward_service.client.sync_client import RewardClient
from reward_service.client.trl import AsyncRewardFunction, RewardFunction, messages_to_text

__all__ = [
    "AsyncRewardClient",
    "AsyncRewardFunction",
    "BadRequest",
    "ClientConfig",
    "DeadlineExceeded",
    "ModelNotFound",
    "RewardClient",
    "RewardClientError",
    "RewardFunction",
    "ScoreResult",
    "NonFiniteReward",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "UnexpectedResponse",
    "UntrustedServer",
    "backoff_delay_s",
    "messages_to_text",
]
