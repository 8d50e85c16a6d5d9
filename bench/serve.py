"""Does `strop serve` keep the engine's batched throughput when many clients stream? Two ways, interleaved:

  (a) `strop serve MODEL` in its own process, CLIENTS concurrent streaming chat requests over HTTP
      (stream=true, include_usage), each prompt once per round;
  (b) the hf engine in this process, the same prompts as CLIENTS concurrent `generate` calls (bench/engine.py's
      batched figure).

Both greedy, same prompts and max_tokens, so both decode the same tokens. Tokens/s counts completion tokens
(the server's usage chunk for (a)). Target: a/b >= 0.8. Also the time to first token (first chunk with a
token) at 1 client and at CLIENTS clients. The clients are a minimal keep-alive HTTP/1.1 load generator that only looks
for the first token and the usage chunk, so that on a small machine they take little CPU from the server (httpx
cost several ms per request here); they run in this process, apart from the server's. Connections are opened
in the warm-up, as a real client pool keeps them.

    .venv/bin/python bench/serve.py --model tiny --clients 64 --max-tokens 32 --rounds 3
    .venv/bin/python bench/serve.py --model smollm2-135m --clients 64 --admission both --rounds 4

`--admission both` starts two servers, one admitting requests into its running batch every `--admit-every`
decoding steps and one with static batches (`--admit-every 0`: a request waits for the batch in flight), and
alternates them within each round: time to first token before and after admission, side by side.

With --capture, what recording costs instead: `strop serve MODEL --db SQLITE` and CLIENTS concurrent agents,
each a conversation of CALLS chat calls (each re-sending the previous reply, sampled with a fixed seed per call),
once under an episode (POST /episodes, the calls at its base URL, a reward, finish: every call stored as a step
and the episode's `pg` examples written) and once on plain /v1 (nothing recorded), alternating in each round.
Throughput is completion tokens (and calls) per second over the whole conversation, episode lifecycle included.
Target: recorded / unrecorded >= 0.95. Also the server process's CPU seconds per token on each side (all its
threads, from /proc), as unrecorded / recorded: on a shared machine wall time swings with the neighbours,
CPU time much less.

    .venv/bin/python bench/serve.py --capture --model tiny --clients 64 --calls 3 --max-tokens 32 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from strop.agents.engines import GenerationRequest
from strop.agents.engines.hf import HFEngine
from strop.agents.models import resolve_model


def _questions(count: int) -> list[str]:
    rng = random.Random(0)
    return [f"What is {rng.randint(10, 99)} + {rng.randint(10, 99)}?" for _ in range(count)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_FIRST = re.compile(rb'"token_ids":\[\d')
_USAGE = re.compile(rb'"completion_tokens":(\d+)')
_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


class _Client:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP to stream: a load generator that costs the
    shared cores little (httpx spends several ms of CPU per request here, which the server then lacks)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """A fresh connection: uvicorn closes idle keep-alive connections after 5 s, shorter than an engine round."""
        if self.writer is not None:
            self.writer.close()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def stream(self, model: str, question: str, max_tokens: int) -> tuple[float, int]:
        """(seconds to the first token, completion tokens) of one streamed chat request."""
        assert self.reader is not None and self.writer is not None, "connect() first"
        body = json.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": question}],
                "temperature": 0,
                "max_tokens": max_tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        start = time.perf_counter()
        self.writer.write(head + body)
        first, tokens, seen = None, None, b""
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise RuntimeError("the server closed the connection")
            seen = seen[-256:] + data
            if first is None and _FIRST.search(seen):
                first = time.perf_counter() - start
            usage = _USAGE.search(seen)
            if usage:
                tokens = int(usage.group(1))
            if b"data: [DONE]" in seen:
                # the chunked body ends with 0\r\n\r\n; read it so the connection is clean for the next request
                while not seen.endswith(b"0\r\n\r\n"):
                    seen = seen[-16:] + await self.reader.read(65536)
                break
        if first is None or tokens is None:
            raise RuntimeError(f"a stream ended without a token or usage: {seen[-200:]!r}")
        return first, tokens

    async def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A plain (not streamed) JSON request; the server's JSON answers carry a Content-Length."""
        assert self.reader is not None and self.writer is not None, "connect() first"
        body = json.dumps(payload).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        length = _LENGTH.search(header)
        if length is None:
            raise RuntimeError(f"{path}: an answer without Content-Length: {header[:200]!r}")
        data = await self.reader.readexactly(int(length.group(1)))
        status = header.split(b"\r\n", 1)[0]
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{path}: {status!r} {data[:300]!r}")
        return dict(json.loads(data))


async def _served(
    clients: list[_Client], model: str, questions: list[str], max_tokens: int
) -> tuple[float, list[float]]:
    await asyncio.gather(*(c.connect() for c in clients))  # a warm pool: connecting is not timed
    await asyncio.sleep(0.3)  # nor the server's accepting them
    start = time.perf_counter()
    results = await asyncio.gather(
        *(c.stream(model, q, max_tokens) for c, q in zip(clients, questions, strict=False))
    )
    wall = time.perf_counter() - start
    return sum(t for _, t in results) / wall, [f for f, _ in results]


async def _engine(engine: HFEngine, questions: list[str], max_tokens: int) -> float:
    start = time.perf_counter()
    out = await asyncio.gather(
        *(
            engine.generate([GenerationRequest.chat(q, temperature=0, max_tokens=max_tokens)])
            for q in questions
        )
    )
    wall = time.perf_counter() - start
    return sum(len(c.token_ids) for [[c]] in out) / wall


def _start_server(
    model: str, port: int, clients: int, db: str | None = None, admit_every: int | None = None
) -> subprocess.Popen[bytes]:
    strop = Path(sys.executable).with_name("strop")
    cmd = [
        str(strop),
        "serve",
        model,
        "--port",
        str(port),
        "--max-batch-size",
        str(clients),
        "--max-queue",
        str(4 * clients),
        *(["--db", db] if db else []),
        *(["--admit-every", str(admit_every)] if admit_every is not None else []),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"strop serve exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            return str(httpx.get(f"{url}/v1/models", timeout=2).json()["data"][0]["id"])
        except (httpx.HTTPError, KeyError):
            time.sleep(0.5)
    raise RuntimeError("strop serve did not start within 300 s")


async def main(args: argparse.Namespace) -> None:
    """One server per admission setting (`--admission both`: admission on and off side by side, rounds
    alternating which goes first), each against the in-process engine's batched figure."""
    questions = _questions(args.clients)
    settings = {"on": [args.admit_every], "off": [0], "both": [args.admit_every, 0]}[args.admission]
    ports = {a: _free_port() for a in settings}
    procs = {a: _start_server(args.model, ports[a], args.clients, admit_every=a) for a in settings}
    try:
        names = {a: _wait_ready(f"http://127.0.0.1:{ports[a]}", procs[a]) for a in settings}
        clients = {a: [_Client("127.0.0.1", ports[a]) for _ in questions] for a in settings}
        engine = HFEngine(resolve_model(args.model), model_version=args.model, max_batch_size=args.clients)
        # warm-up of every side (first batches pay allocation and kernel selection)
        for a in settings:
            await _served(clients[a], names[a], questions, 4)  # also opens the connections
        await _engine(engine, questions[:4], 4)
        served: dict[int, list[float]] = {a: [] for a in settings}
        ttft_many: dict[int, list[float]] = {a: [] for a in settings}
        batched: list[float] = []
        for r in range(args.rounds):
            for a in settings if r % 2 == 0 else settings[::-1]:
                tps, firsts = await _served(clients[a], names[a], questions, args.max_tokens)
                served[a].append(tps)
                ttft_many[a].append(statistics.median(firsts))
                print(
                    f"round {r}, admit every {a or 'never (static batches)'}: served {tps:,.0f} tok/s, TTFT at "
                    f"{args.clients} clients median {statistics.median(firsts) * 1000:.0f} ms "
                    f"(max {max(firsts) * 1000:.0f} ms)",
                    flush=True,
                )
            batched.append(await _engine(engine, questions, args.max_tokens))
            print(f"round {r}: engine in process {batched[-1]:,.0f} tok/s", flush=True)
        print(
            f"\n{args.model}: {args.clients} streaming clients, max_tokens {args.max_tokens}, "
            f"load average {os.getloadavg()[0]:.1f}; engine batched (b): median {statistics.median(batched):,.0f} tok/s"
        )
        for a in settings:
            ttft_one = []
            for q in questions[: args.single]:
                _, [first] = await _served(clients[a][:1], names[a], [q], args.max_tokens)
                ttft_one.append(first)
            ratios = [x / y for x, y in zip(served[a], batched, strict=True)]
            print(
                f"admit every {a or 'never (static batches)'}: served (a) median {statistics.median(served[a]):,.0f} "
                f"tok/s, a/b median {statistics.median(ratios):.2f} (rounds {', '.join(f'{x:.2f}' for x in ratios)}; "
                f"target >= 0.8); TTFT 1 client median {statistics.median(ttft_one) * 1000:.0f} ms, "
                f"{args.clients} clients median {statistics.median(ttft_many[a]) * 1000:.0f} ms"
            )
        await engine.close()
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)


async def _conversation(
    client: _Client, model: str, question: str, args: argparse.Namespace, seed: int, recorded: bool
) -> int:
    """One agent's conversation of args.calls chat calls; recorded: under its own episode, then rewarded and
    finished. Returns the completion tokens it was sent."""
    base, episode = "/v1", ""
    if recorded:
        episode = (await client.post("/episodes", {"task_id": question}))["id"]
        base = f"/episodes/{episode}/v1"
    messages = [{"role": "user", "content": question}]
    tokens, text = 0, ""
    for k in range(args.calls):
        r = await client.post(
            f"{base}/chat/completions",
            {
                "model": model,
                "messages": messages,
                "max_tokens": args.max_tokens,
                "temperature": 1.0,
                "seed": seed + k,
            },
        )
        text = r["choices"][0]["message"]["content"]
        tokens += int(r["usage"]["completion_tokens"])
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "Check it again."}]
    if recorded:
        await client.post(f"/episodes/{episode}/reward", {"reward": 1.0})
        await client.post(f"/episodes/{episode}/finish", {"answer": text})
    return tokens


def _cpu_s(pid: int) -> float:
    """CPU seconds a process used so far, all threads (Linux): less disturbed by a busy machine than wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _agents(
    clients: list[_Client],
    model: str,
    questions: list[str],
    args: argparse.Namespace,
    recorded: bool,
    server_pid: int | None = None,
) -> tuple[float, float]:
    """Completion tokens per second of all clients' conversations at once (connecting not timed), and the
    server's CPU seconds per 1,000 of those tokens (0 without its pid)."""
    await asyncio.gather(*(c.connect() for c in clients))
    await asyncio.sleep(0.3)  # also lets the other side's trailing work (capture writes) finish untimed
    cpu = _cpu_s(server_pid) if server_pid else 0.0
    start = time.perf_counter()
    tokens = await asyncio.gather(
        *(
            _conversation(c, model, q, args, seed=100 * i, recorded=recorded)
            for i, (c, q) in enumerate(zip(clients, questions, strict=True))
        )
    )
    wall = time.perf_counter() - start
    cpu = _cpu_s(server_pid) - cpu if server_pid else 0.0
    return sum(tokens) / wall, 1000 * cpu / max(1, sum(tokens))


async def capture_main(args: argparse.Namespace) -> None:
    """Recorded (under episodes, stored in SQLite) against unrecorded (/v1) calls on one server, interleaved."""
    import tempfile

    from strop.memory import Store

    questions = _questions(args.clients)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="strop-bench-capture-") as tmp:
        db = {"sqlite": f"sqlite:///{tmp}/capture.db", "none": None}.get(args.db, args.db)
        proc = _start_server(args.model, port, args.clients, db)
        try:
            name = _wait_ready(f"http://127.0.0.1:{port}", proc)
            clients = [_Client("127.0.0.1", port) for _ in questions]
            warm = argparse.Namespace(**{**vars(args), "calls": 1, "max_tokens": 4})
            await _agents(clients, name, questions, warm, recorded=False)
            await _agents(clients, name, questions, warm, recorded=True)
            ratios, plain, recorded, cpu_ratios = [], [], [], []
            for r in range(args.rounds):
                # alternate which side goes first, so neither always gets the warmer server
                first = r % 2 == 1
                rate: dict[bool, tuple[float, float]] = {}
                for side in (first, not first):
                    rate[side] = await _agents(clients, name, questions, args, side, proc.pid)
                (a, cpu_a), (b, cpu_b) = rate[True], rate[False]
                recorded.append(a)
                plain.append(b)
                ratios.append(a / b)
                cpu_ratios.append(cpu_b / cpu_a if cpu_a else 0.0)
                print(
                    f"round {r}: recorded {a:,.0f} tok/s, unrecorded {b:,.0f} tok/s, ratio {a / b:.2f}; server "
                    f"CPU per 1k tokens {cpu_a:.2f} s vs {cpu_b:.2f} s",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        counts, examples = {}, 0
        if db is not None:
            store = Store(db)
            counts, examples = store.counts(), store.count_examples(kind="advantage")
            store.close()
    episodes = args.clients * (args.rounds + 1)  # the warm-up's recorded conversations too
    print(
        f"\n{args.model}: {args.clients} concurrent agents x {args.calls} chat calls, max_tokens {args.max_tokens}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"recorded: median {statistics.median(recorded):,.0f} tok/s; unrecorded: median "
        f"{statistics.median(plain):,.0f} tok/s; recorded/unrecorded median {statistics.median(ratios):.2f} "
        f"(rounds {', '.join(f'{x:.2f}' for x in ratios)}; target >= 0.95)"
    )
    print(
        f"server CPU per token, unrecorded / recorded: median {statistics.median(cpu_ratios):.2f} "
        f"(rounds {', '.join(f'{x:.2f}' for x in cpu_ratios)})"
    )
    if db is not None:  # what the recorded side left in the store: every episode, step and pg action
        print(
            f"stored: {counts['episodes']} episodes (expected {episodes}), {counts['steps']} steps, "
            f"{examples} advantage examples"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single", type=int, default=5, help="Requests timed alone for the 1-client TTFT.")
    parser.add_argument(
        "--admission",
        default="on",
        choices=["on", "off", "both"],
        help="The server's admission into its running batch: on (--admit-every steps), off (static batches), "
        "or both side by side (two servers, rounds alternating).",
    )
    parser.add_argument("--admit-every", type=int, default=16, help="Decoding steps between admissions (on).")
    parser.add_argument(
        "--capture",
        action="store_true",
        help="Measure recorded (episode) against unrecorded (/v1) calls instead.",
    )
    parser.add_argument("--calls", type=int, default=3, help="Chat calls per conversation (--capture).")
    parser.add_argument(
        "--db",
        default="sqlite",
        help="Where --capture records: sqlite (a fresh file), none (the server's memory only), or a store URL.",
    )
    parsed = parser.parse_args()
    asyncio.run(capture_main(parsed) if parsed.capture else main(parsed))
