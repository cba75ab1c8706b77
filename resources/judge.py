"""A judge model that compares two answers to the same prompt: any OpenAI-compatible endpoint (the
`openai` client: a hosted service, vLLM, a llama.cpp or MLflow server) or a local Hugging Face model.

Each comparison is asked twice, the answers swapped, so that a judge that prefers a position gives
both answers the same half point: a win in both orders is 1, a loss in both 0, anything else 0.5
(`pairwise_scores`). The mean over the prompts is the win rate.

The judge reads the prompt, the reference answer when there is one, and the two answers; it replies
with A, B or TIE. A local model is asked the same question and its reply read from its next token:
whichever of "A" and "B" it finds likelier (so it always answers).
"""

import os
from dataclasses import dataclass, field

JUDGE_SYSTEM = (
    "You are a strict evaluator. You compare two answers to the same request and decide which one answers it "
    "better: correct, complete, in the requested format, and no longer than needed. Reply with a single "
    "letter: A or B, or TIE when they are equally good."
)


@dataclass(frozen=True)
class Comparison:
    """One prompt and two answers to it, with the reference answer when the data has one."""

    prompt: str
    reference: str
    first: str
    second: str


def judge_request(c: Comparison) -> list[dict]:
    """The judge's chat messages for one comparison, answer `first` shown as A."""
    reference = f"Reference answer:\n{c.reference}\n\n" if c.reference else ""
    user = (
        f"Request:\n{c.prompt}\n\n{reference}Answer A:\n{c.first}\n\nAnswer B:\n{c.second}\n\n"
        "Which answer is better? Reply with A, B or TIE."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def read_verdict(reply: str) -> str:
    """'A', 'B' or 'TIE' from the judge's reply (its first word); anything else counts as a tie."""
    words = reply.strip().upper().replace("*", "").split()
    first = words[0].strip(".:,!\"'()") if words else ""
    return first if first in ("A", "B", "TIE") else "TIE"


def pairwise_scores(judge, comparisons: list[Comparison]) -> list[float]:
    """Per comparison, how the first answer fared against the second, asked in both orders: 1 (won both),
    0 (lost both), 0.5 (a tie, or one win each: a judge that always picks A scores 0.5 everywhere)."""
    swapped = [Comparison(c.prompt, c.reference, c.second, c.first) for c in comparisons]
    verdicts = judge(comparisons + swapped)
    forward, backward = verdicts[: len(comparisons)], verdicts[len(comparisons) :]
    points = {"A": 1.0, "TIE": 0.5, "B": 0.0}
    return [(points[f] + 1.0 - points[b]) / 2 for f, b in zip(forward, backward)]


@dataclass
class EndpointJudge:
    """A judge behind an OpenAI-compatible chat completions endpoint; its key from the environment."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    replies: list[str] = field(default_factory=list)
    """The raw replies, in order (what an operator reads when the verdicts look wrong)."""

    def __call__(self, comparisons: list[Comparison]) -> list[str]:
        from openai import OpenAI

        key = os.environ.get(self.api_key_env) or "not-needed"
        client = OpenAI(base_url=self.base_url or None, api_key=key, timeout=self.timeout, max_retries=2)
        verdicts = []
        for c in comparisons:
            response = client.chat.completions.create(
                model=self.model, messages=judge_request(c), temperature=0.0, max_tokens=4
            )
            reply = response.choices[0].message.content or ""
            self.replies.append(reply)
            verdicts.append(read_verdict(reply))
        return verdicts


@dataclass
class LocalJudge:
    """A local causal LM as judge: the request in its chat template, the verdict its likelier next token
    of "A" and "B"."""

    model: object
    tokenizer: object
    batch_size: int = 8

    def __call__(self, comparisons: list[Comparison]) -> list[str]:
        import torch

        tok = self.tokenizer
        choices = [tok.encode(letter, add_special_tokens=False)[0] for letter in ("A", "B")]
        texts = [
            tok.apply_chat_template(judge_request(c), tokenize=False, add_generation_prompt=True) for c in comparisons
        ]
        side, tok.padding_side = tok.padding_side, "left"
        verdicts = []
        try:
            for start in range(0, len(texts), self.batch_size):
                batch = tok(texts[start : start + self.batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(self.model.device)  # fmt: skip
                with torch.no_grad():
                    logits = self.model(**batch).logits[:, -1, choices]
                verdicts += ["A" if a >= b else "B" for a, b in logits.tolist()]
        finally:
            tok.padding_side = side
        return verdicts
