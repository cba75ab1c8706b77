"""The judge: pairwise verdicts asked in both orders, through the `openai` client against an
OpenAI-compatible endpoint (a small one served here) and with a local model; the gate's win-rate
criterion. The judge on a real pipeline run (the bundled SmolLM2 judging) is in
tests/test_regression_suites.py's planted run."""

import json
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from data_checks.promotion_gate import GateConfig, gate_verdict
from resources.judge import Comparison, EndpointJudge, LocalJudge, judge_request, pairwise_scores, read_verdict
from tests.test_metrics_and_gate import evaluation

RIGHT = Comparison("Capital of France?", "Paris", "Paris", "Berlin")


def test_the_verdict_is_the_replys_first_word_and_anything_else_a_tie():
    assert [read_verdict(r) for r in ("A", " b.", "**A**", "TIE", "Tie: both fine", "I think A", "")] == [
        "A", "B", "A", "TIE", "TIE", "TIE", "TIE",
    ]  # fmt: skip


def test_both_orders_are_asked_so_a_judge_that_favours_a_position_gives_half_points():
    always_a = lambda comparisons: ["A"] * len(comparisons)  # noqa: E731
    assert pairwise_scores(always_a, [RIGHT, RIGHT]) == [0.5, 0.5]
    by_reference = lambda cs: ["A" if c.first == c.reference else "B" for c in cs]  # noqa: E731
    flipped = Comparison("Capital of France?", "Paris", "Berlin", "Paris")
    assert pairwise_scores(by_reference, [RIGHT, flipped]) == [1.0, 0.0]
    ties = lambda cs: ["TIE"] * len(cs)  # noqa: E731
    assert pairwise_scores(ties, [RIGHT]) == [0.5]


def test_the_request_shows_the_prompt_the_reference_and_both_answers_under_their_letters():
    system, user = judge_request(RIGHT)
    assert system["role"] == "system" and "A or B" in system["content"]
    assert "Request:\nCapital of France?" in user["content"] and "Reference answer:\nParis" in user["content"]
    assert user["content"].index("Answer A:\nParis") < user["content"].index("Answer B:\nBerlin")
    assert "Reference" not in judge_request(replace(RIGHT, reference=""))[1]["content"]


class Endpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat completions endpoint whose judge prefers the answer equal to the reference."""

    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Endpoint.seen.append((self.path, self.headers.get("Authorization"), body["model"], body["temperature"]))
        text = body["messages"][1]["content"]
        reference = text.split("Reference answer:\n")[1].split("\n")[0]
        a = text.split("Answer A:\n")[1].split("\n")[0]
        reply = "A" if a == reference else "B."
        payload = {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
        }  # fmt: skip
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_an_openai_compatible_endpoint_judges_with_its_key_from_the_environment(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    try:
        judge = EndpointJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge-model", "JUDGE_KEY")
        flipped = Comparison("Capital of France?", "Paris", "Berlin", "Paris")
        assert pairwise_scores(judge, [RIGHT, flipped]) == [1.0, 0.0]
    finally:
        server.shutdown()
    assert Endpoint.seen[0] == ("/v1/chat/completions", "Bearer sk-test", "judge-model", 0.0)
    assert len(Endpoint.seen) == 4, "two comparisons, each asked in both orders"
    assert judge.replies == ["A", "B.", "B.", "A"]


def test_a_local_model_judges_from_its_next_token(tiny_model_dir):
    from resources.models import ModelLoader

    loader = ModelLoader()
    judge = LocalJudge(loader.load_model(str(tiny_model_dir)).eval(), loader.load_tokenizer(str(tiny_model_dir)), 2)
    verdicts = judge([RIGHT, replace(RIGHT, first="Lyon"), replace(RIGHT, second="Rome")])
    assert len(verdicts) == 3 and set(verdicts) <= {"A", "B"}
    assert judge.tokenizer.padding_side == "right", "the tokenizer is left as it was"


def test_the_judges_win_rate_is_gated_only_when_asked_and_on_its_lower_bound():
    ev = replace(evaluation(), judge={"base": (1.0,) * 30 + (0.5,) * 10})
    assert [c.key for c in gate_verdict(ev, GateConfig()).criteria] == ["vs_base", "forgetting_pct"]
    verdict = gate_verdict(ev, GateConfig(min_judge_win_rate=0.5))
    judged = verdict.criteria[-1]
    assert judged.criterion == "judge win rate vs base" and judged.value == pytest.approx(0.875)
    assert judged.passed and judged.low > 0.5
    unsure = replace(ev, judge={"base": (1.0, 0.0) * 10})
    failed = gate_verdict(unsure, GateConfig(min_judge_win_rate=0.5))
    assert not failed.passed and "judge win rate vs base: +0.5000" in failed.reason
