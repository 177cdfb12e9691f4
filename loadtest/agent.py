"""``--mode agent``: a voice agent's traffic, text in at an LLM's pace via StreamingSynthesize.

Each turn takes a bundled text of two or more sentences and measures, side by side:

- **T1**: the first sentence alone through ``Synthesize``, request sent to first audio.
- **streamed**: the whole reply through ``StreamingSynthesize``, written token by token at
  ``--token-rate`` tokens per second (tokens are words with their leading space, as LLMs
  emit them); from the moment the token that ends the first sentence was written to the
  first audio of the call.

The target is streamed <= T1 + 100 ms: buffering the text costs at most the wait for the
token after the sentence end. Turns run one after another, so the server is otherwise idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from loadtest.corpus import Text, load_texts
from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc

log = logging.getLogger("loadtest")

TARGET_MARGIN_S = 0.100
_FIRST_SENTENCE = re.compile(r"^.*?[.!?]+(?=\s)", re.S)
_TOKEN = re.compile(r"\s*\S+")


@dataclass(frozen=True)
class Turn:
    """One turn's figures, in seconds."""

    text_id: str
    first_sentence: str
    t1_s: float  # Synthesize of the first sentence alone: to first audio
    streamed_s: float  # StreamingSynthesize: first sentence's last token written -> first audio
    chunks: int

    @property
    def overhead_s(self) -> float:
        return self.streamed_s - self.t1_s


def llm_tokens(text: str) -> list[str]:
    """Word-sized tokens with their leading whitespace, as an LLM streams them."""
    return _TOKEN.findall(text)


def first_sentence(text: str) -> str | None:
    m = _FIRST_SENTENCE.match(text)
    return m.group(0).strip() if m else None


def agent_texts(languages: tuple[str, ...]) -> list[Text]:
    """Bundled texts with a first sentence followed by more text."""
    return [
        t
        for t in load_texts(languages, max_sentences=6)
        if t.sentences >= 2 and first_sentence(t.text)
    ]


async def _t1(stub: Any, sentence: str, args: argparse.Namespace) -> float:
    req = tts_pb2.SynthesizeRequest(
        text=sentence, voice=args.voice, steps=args.steps, speed=args.speed
    )
    sent = time.perf_counter()
    async for msg in stub.Synthesize(req, timeout=args.timeout):
        if msg.HasField("chunk"):
            first = time.perf_counter() - sent
            break
    else:
        raise RuntimeError("Synthesize ended without audio")
    return first


async def _streamed(stub: Any, text: str, args: argparse.Namespace) -> tuple[float, int]:
    sentence = first_sentence(text) or text
    tokens = llm_tokens(text)
    call = stub.StreamingSynthesize(timeout=args.timeout)
    config = tts_pb2.StreamingSynthesizeConfig(
        voice=args.voice,
        steps=args.steps,
        speed=args.speed,
        buffering=tts_pb2.TextBufferingConfig(early_first_clause=args.early_clause),
    )
    await call.write(tts_pb2.StreamingSynthesizeRequest(config=config))
    sentence_end: list[float] = []

    async def write() -> None:
        written = ""
        start = time.perf_counter()
        for i, token in enumerate(tokens):
            # Paced against the start, so slow writes do not slow the token rate down.
            await asyncio.sleep(max(0.0, start + i / args.token_rate - time.perf_counter()))
            await call.write(tts_pb2.StreamingSynthesizeRequest(text=token))
            written += token
            if not sentence_end and len(written.strip()) >= len(sentence):
                sentence_end.append(time.perf_counter())
        await call.done_writing()

    writer = asyncio.create_task(write())
    first_audio, chunks = None, 0
    async for msg in call:
        if msg.HasField("chunk"):
            chunks += 1
            if first_audio is None:
                first_audio = time.perf_counter()
    await writer
    if first_audio is None or not sentence_end:
        raise RuntimeError("StreamingSynthesize ended without audio")
    return first_audio - sentence_end[0], chunks


async def run_turns(address: str, args: argparse.Namespace) -> list[Turn]:
    """`args.turns` turns, one after another; T1 and the stream of each side by side."""
    texts = agent_texts(tuple(args.languages))
    rng = random.Random(args.seed)
    turns: list[Turn] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        warm = rng.choice(texts)
        await _t1(stub, first_sentence(warm.text) or warm.text, args)  # uncounted warm-up
        for i in range(args.turns):
            text = rng.choice(texts)
            sentence = first_sentence(text.text) or text.text
            # Alternate the order, so neither measurement always runs on a warmer server.
            if i % 2:
                streamed, chunks = await _streamed(stub, text.text, args)
                t1 = await _t1(stub, sentence, args)
            else:
                t1 = await _t1(stub, sentence, args)
                streamed, chunks = await _streamed(stub, text.text, args)
            turn = Turn(text.id, sentence, t1, streamed, chunks)
            log.info(
                "turn %d %s: T1 %.3f s, streamed %.3f s (%+.0f ms)",
                i, text.id, t1, streamed, 1000 * turn.overhead_s,
            )  # fmt: skip
            turns.append(turn)
    return turns


def summarize(turns: list[Turn], args: argparse.Namespace) -> dict[str, Any]:
    """Medians and worst cases of the turns, and whether the target holds."""
    t1 = [t.t1_s for t in turns]
    streamed = [t.streamed_s for t in turns]
    overhead = [t.overhead_s for t in turns]
    median_overhead = statistics.median(overhead)
    return {
        "mode": "agent",
        "token_rate": args.token_rate,
        "turns": len(turns),
        "early_first_clause": args.early_clause,
        "t1_s": {"median": statistics.median(t1), "max": max(t1)},
        "streamed_s": {"median": statistics.median(streamed), "max": max(streamed)},
        "overhead_s": {"median": median_overhead, "max": max(overhead)},
        "target": f"streamed <= T1 + {TARGET_MARGIN_S * 1000:.0f} ms (median)",
        "target_met": median_overhead <= TARGET_MARGIN_S,
        "per_turn": [asdict(t) | {"overhead_s": t.overhead_s} for t in turns],
    }


def render(summary: dict[str, Any]) -> str:
    s = summary
    lines = [
        f"# Agent mode: {s['turns']} turns at {s['token_rate']:g} tokens/s",
        "",
        "| figure | median | max |",
        "| --- | --- | --- |",
        f"| T1: first sentence alone via Synthesize, to first audio | "
        f"{s['t1_s']['median']:.3f} s | {s['t1_s']['max']:.3f} s |",
        f"| streamed: first sentence's last token written, to first audio | "
        f"{s['streamed_s']['median']:.3f} s | {s['streamed_s']['max']:.3f} s |",
        f"| streamed - T1 | {1000 * s['overhead_s']['median']:+.0f} ms | "
        f"{1000 * s['overhead_s']['max']:+.0f} ms |",
        "",
        f"Target {s['target']}: {'met' if s['target_met'] else 'NOT met'}.",
    ]
    return "\n".join(lines)


async def execute(args: argparse.Namespace) -> dict[str, Any]:
    """The agent run against ``args.address`` or a spawned server; writes agent.json/.md."""
    from loadtest.spawn import SpawnedServer

    if args.spawn:
        with SpawnedServer(args.server_arg, args.out_dir / "server.log") as server:
            await server.wait_ready(args.ready_timeout)
            turns = await run_turns(server.address, args)
            server.stop()
    else:
        turns = await run_turns(args.address, args)
    summary = summarize(turns, args)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "agent.json").write_text(json.dumps(summary, indent=2))
    (out / "agent.md").write_text(render(summary) + "\n")
    return summary


def main(args: argparse.Namespace) -> int:
    """``python -m loadtest --mode agent``: run, print the table, exit 0 (1 on failure)."""
    from loadtest.cli import fail
    from loadtest.spawn import SpawnError

    try:
        summary = asyncio.run(execute(args))
    except (SpawnError, OSError, ValueError, RuntimeError) as exc:
        fail(str(exc), code=1)
    except grpc.aio.AioRpcError as exc:
        fail(f"RPC failed: {exc.code().name}: {exc.details()}", code=1)
    print(render(summary))
    return 0
