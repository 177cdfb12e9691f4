"""`python -m loadtest --mode agent`: LLM-paced StreamingSynthesize vs T1, side by side."""

from __future__ import annotations

import asyncio
import json

import pytest

from loadtest import agent
from loadtest.cli import parse_args


def test_tokens_keep_their_leading_space_and_rebuild_the_text() -> None:
    text = "Hello there. How are you?"
    tokens = agent.llm_tokens(text)
    assert tokens == ["Hello", " there.", " How", " are", " you?"]
    assert "".join(tokens) == text


def test_first_sentence_needs_text_after_it() -> None:
    assert agent.first_sentence("Good morning! It is late.") == "Good morning!"
    assert agent.first_sentence("Only one sentence.") is None


def test_agent_flags_are_validated() -> None:
    args = parse_args(["--mode", "agent", "--token-rate", "12", "--turns", "2"])
    assert (args.mode, args.token_rate, args.turns) == ("agent", 12.0, 2)
    with pytest.raises(SystemExit):
        parse_args(["--mode", "agent", "--token-rate", "0"])


def test_summary_compares_the_median_overhead_with_the_target() -> None:
    args = parse_args(["--mode", "agent"])
    turns = [
        agent.Turn("a", "A.", t1_s=0.30, streamed_s=0.35, chunks=2),
        agent.Turn("b", "B.", t1_s=0.40, streamed_s=0.60, chunks=2),
        agent.Turn("c", "C.", t1_s=0.20, streamed_s=0.22, chunks=2),
    ]
    summary = agent.summarize(turns, args)
    assert summary["overhead_s"]["median"] == pytest.approx(0.05)
    assert summary["target_met"] is True
    assert "+50 ms" in agent.render(summary)


@pytest.mark.slow
def test_agent_run_against_a_live_server(live_server, tmp_path) -> None:
    args = parse_args(
        ["--mode", "agent", "--turns", "1", "--token-rate", "100", "--steps", "2",
         "--languages", "en", "--out-dir", str(tmp_path)]
    )  # fmt: skip
    args.address = live_server.address
    summary = asyncio.run(agent.execute(args))
    (turn,) = summary["per_turn"]
    assert turn["t1_s"] > 0 and turn["streamed_s"] > 0 and turn["chunks"] >= 2
    assert json.loads((tmp_path / "agent.json").read_text())["turns"] == 1
