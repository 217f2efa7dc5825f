"""What signing the elastic control messages costs, as a fraction of an inner step of the default job.

Measured, not assumed: the CPU time of one request's full round (the worker seals it, the coordinator opens,
parses and verifies it and checks its sequence number, seals the reply, the worker opens and verifies the
reply) against the CPU time of one inner step (forward, backward and AdamW step) of the default
``farsync train`` configuration (GPT of 0.88M parameters, batch 8, one thread as elastic workers run).
Per inner step a worker sends ``2 / H`` requests (arrive and done at each boundary, H inner steps apart) and
``step_s / heartbeat_interval_s`` heartbeats (counted as full rounds too, though a heartbeat has no reply);
the overhead is that many rounds' CPU time over the step's.
CPU time (``time.process_time``) rather than wall time, so the machine's other load does not distort it.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from farsync.comm.auth import (
    SequenceGuard,
    check_mac,
    coordinator_key,
    open_envelope,
    seal,
    session_key,
)
from farsync.comm.schema import decode_json, encode, validate
from farsync.config import RunConfig, load_config
from farsync.elastic.messages import MAX_REPLY_BYTES, MAX_REQUEST_BYTES, ReplyBody, parse_request

__all__ = ["signing_overhead"]


def _round_trip_s(num_messages: int) -> float:
    """CPU seconds of one signed request and its signed reply, both ends, averaged."""
    token, nonce, incarnation = b"t" * 64, "n" * 32, "abcdef012345"
    worker_key = session_key(token, nonce, 0, incarnation)
    reply_key = coordinator_key(token, nonce)
    guard = SequenceGuard()
    decision = {"boundary": 7, "quorum_id": 1, "members": [0, 1, 2, 3], "source": 0, "healers": []}
    decision.update(round=7, step=350, reduce=True, reason="unchanged")
    begin = time.process_time()
    for sequence in range(1, num_messages + 1):
        request = f"{incarnation}-main-{sequence}"
        body = {"type": "arrive", "slot": 0, "round": 7, "step": 350, "sha": "f" * 64, "pending": True}
        body.update(request=request, sequence=sequence, channel="main", incarnation=incarnation)
        raw = seal(worker_key, incarnation, encode(body))
        envelope = open_envelope(raw, MAX_REQUEST_BYTES)  # the coordinator
        message = parse_request(envelope.body)
        check_mac(worker_key, envelope)
        guard.accept(message.incarnation, message.channel, message.sequence)
        reply = seal(reply_key, "coordinator", encode(ReplyBody(request, decision)))
        answer = open_envelope(reply, MAX_REPLY_BYTES)  # the worker
        validate(decode_json(answer.body, MAX_REPLY_BYTES), ReplyBody)
        check_mac(reply_key, answer)
    return (time.process_time() - begin) / num_messages


def _inner_step_s(config: RunConfig, num_steps: int) -> tuple[float, int]:
    """CPU seconds of one inner step of ``config``'s model and batch (one intra-op thread), and the
    model's parameter count."""
    from farsync.train.task import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model(config.model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        shape = (config.train.batch_size, config.model.context_length)
        inputs, targets = torch.randint(0, 256, shape), torch.randint(0, 256, shape)

        def step() -> None:
            logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
            )
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()

        for _ in range(3):
            step()
        begin = time.process_time()
        for _ in range(num_steps):
            step()
        num_params = sum(p.numel() for p in model.parameters())
        return (time.process_time() - begin) / num_steps, num_params
    finally:
        torch.set_num_threads(threads)


def signing_overhead(num_messages: int = 5000, num_steps: int = 20) -> dict[str, Any]:
    """Signing's share of an inner step of the default job (target: at most 1%)."""
    config = load_config(None, [])
    round_trip_s = _round_trip_s(num_messages)
    step_s, num_params = _inner_step_s(config, num_steps)
    requests_per_step = 2 / config.algorithm.num_inner_steps
    beats_per_step = step_s / config.elastic.heartbeat_interval_s
    fraction = (requests_per_step + beats_per_step) * round_trip_s / step_s
    return {
        "model_params": num_params,
        "batch_size": config.train.batch_size,
        "num_inner_steps": config.algorithm.num_inner_steps,
        "heartbeat_interval_s": config.elastic.heartbeat_interval_s,
        "sign_verify_round_trip_us": round_trip_s * 1e6,
        "inner_step_ms": step_s * 1e3,
        "messages_per_inner_step": requests_per_step + beats_per_step,
        "overhead_fraction": fraction,
        "target_met": fraction <= 0.01,
    }
