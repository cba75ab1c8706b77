"""Generate the bundled sample data: support tickets -> a JSON triage record.

The task is small enough for a 135M model to learn on a laptop CPU and its answers can be checked
exactly: every field of the expected JSON is determined by cues in the ticket text (the product is
named, the category follows from the problem described, the priority from the urgency expressed).

The output is deterministic (a fixed seed, no clock): `python -m pipelines.sample_data.generate`
rewrites `pipelines/sample_data/landing/`, and a test checks the committed files match.

Three dated drops in two formats (JSONL, CSV) stand for data landing over time. A handful of rows
are deliberately bad, for the quality gate to catch: an empty answer, a missing instruction, an
exact and a case/whitespace duplicate, and an over-long ticket. Two tickets carry contact details,
which the personal-data scan flags (a warning, not a rejection). A fourth drop holds preference
pairs on the same task (prompt, chosen, rejected): the right JSON chosen, the same JSON with one
field wrong rejected, for the preference stage (DPO) and the preference evaluation.
"""

import csv
import io
import json
import random
import sys
from pathlib import Path

LANDING = Path(__file__).parent / "landing"
SEED = 20260105

SYSTEM_INSTRUCTIONS = [
    "Triage this support ticket. Reply with JSON holding category, priority and product.",
    "Read the ticket and return its category, priority and product as JSON.",
    "Classify the support ticket below: give category, priority and product as a JSON object.",
]

# product value -> ways customers refer to it
PRODUCTS = {
    "RouterX": ["my RouterX", "the RouterX box", "our RouterX router", "the Acme RouterX"],
    "CloudDrive": ["CloudDrive", "the CloudDrive app", "my CloudDrive account storage", "CloudDrive sync"],
    "PayFlow": ["PayFlow", "the PayFlow app", "PayFlow on my phone", "the PayFlow checkout"],
    "Thermo": ["my Thermo thermostat", "the Thermo", "our Thermo smart thermostat", "Thermo"],
    "Beacon": ["my Beacon headset", "the Beacon earbuds", "Beacon", "the Beacon headphones"],
}

# category -> problem descriptions; "{p}" is the product mention
PROBLEMS = {
    "billing": [
        "I was charged twice for {p} this month",
        "the invoice for {p} shows the wrong amount",
        "I cancelled {p} but you still took a payment",
        "my refund for {p} never arrived",
        "the price of {p} went up without any notice on my bill",
    ],
    "technical": [
        "{p} keeps crashing when I open it",
        "{p} stopped working after the last update",
        "{p} shows an error code E42 and will not start",
        "{p} disconnects every few minutes",
        "{p} is extremely slow and freezes",
    ],
    "account": [
        "I cannot log in to {p} anymore",
        "I forgot the password for {p} and the reset email never comes",
        "{p} says my account is locked",
        "I need to change the email address on my {p} account",
        "two-factor codes for {p} are not accepted",
    ],
    "shipping": [
        "my order of {p} has not arrived yet",
        "{p} was delivered to the wrong address",
        "the package with {p} arrived damaged",
        "tracking for {p} has not updated in a week",
        "I received the wrong color of {p}",
    ],
    "feature_request": [
        "it would be great if {p} had a dark mode",
        "please add an export to spreadsheet option in {p}",
        "could {p} support more than one user profile",
        "I would love a scheduling feature in {p}",
        "can you make {p} work with voice assistants",
    ],
}

# priority -> urgency cues (an empty cue reads as an ordinary request)
URGENCY = {
    "low": ["No rush, whenever you have time.", "Not urgent at all.", "Just letting you know, low priority."],
    "medium": ["Please take a look.", "Could you help with this?", "Thanks in advance."],
    "high": [
        "Please fix this as soon as possible.",
        "This is blocking my work today.",
        "I need this sorted out quickly.",
    ],
    "urgent": [
        "URGENT: our whole business is down because of this!",
        "This is an emergency, we are losing money every minute.",
        "Critical: all our customers are affected right now!",
    ],
}

# How many preference pairs the preference drop holds, and the seed they are drawn with (their own, so
# the ticket drops stay as they are).
PREFERENCE_PAIRS = 36
PREFERENCE_SEED = SEED + 21
# field of the triage JSON -> its possible values (a rejected reply takes another one)
FIELD_VALUES = {"category": sorted(PROBLEMS), "priority": sorted(URGENCY), "product": sorted(PRODUCTS)}

OPENERS = ["Hi,", "Hello support,", "Hey team,", "Good morning,", "Dear support,", ""]
CLOSERS = ["Thanks, Dana", "Regards, Sam", "Cheers, Alex", "Best, Priya", "Thank you, Marco", ""]


def ticket(rng: random.Random) -> dict:
    """One well-formed alpaca-style row: instruction, input (the ticket), output (JSON)."""
    product = rng.choice(sorted(PRODUCTS))
    category = rng.choice(sorted(PROBLEMS))
    priority = rng.choice(sorted(URGENCY))
    problem = rng.choice(PROBLEMS[category]).format(p=rng.choice(PRODUCTS[product]))
    parts = [rng.choice(OPENERS), problem[0].upper() + problem[1:] + ".", rng.choice(URGENCY[priority])]
    parts.append(rng.choice(CLOSERS))
    text = " ".join(p for p in parts if p)
    answer = {"category": category, "priority": priority, "product": product}
    return {
        "instruction": rng.choice(SYSTEM_INSTRUCTIONS),
        "input": text,
        "output": json.dumps(answer),
    }


def over_long_ticket(rng: random.Random) -> dict:
    """A ticket with a pasted log far beyond any sensible training length."""
    row = ticket(rng)
    log = "\n".join(
        f"2026-01-1{i % 10} 12:{i % 60:02d}:0{i % 10} ERROR sync worker {i} failed: timeout after 30s"
        for i in range(120)
    )
    row["input"] = row["input"] + "\nHere is the full log:\n" + log
    return row


def preference_pair(rng: random.Random) -> dict:
    """One preference row: a ticket as the prompt, its right JSON chosen, and the same JSON with one
    field given a wrong value rejected."""
    row = ticket(rng)
    answer = json.loads(row["output"])
    field = rng.choice(sorted(answer))
    wrong = {**answer, field: rng.choice([v for v in FIELD_VALUES[field] if v != answer[field]])}
    return {"prompt": f"{row['instruction']}\n\n{row['input']}", "chosen": row["output"], "rejected": json.dumps(wrong)}


def drops() -> dict[str, tuple[str, list[dict]]]:
    """Drop folder name -> (file name, rows), bad rows placed at fixed positions."""
    rng = random.Random(SEED)
    first = [ticket(rng) for _ in range(150)]
    second = [ticket(rng) for _ in range(130)]
    third = [ticket(rng) for _ in range(120)]
    preference_rng = random.Random(PREFERENCE_SEED)

    first[17]["output"] = ""  # empty answer
    first[88]["instruction"] = ""  # missing instruction
    second[40] = dict(first[5])  # exact duplicate of an earlier drop's row
    dup = dict(first[60])
    dup["input"] = "  " + dup["input"].upper() + "  "  # same ticket, other case and spacing
    third[33] = dup
    third[71] = over_long_ticket(rng)
    second[99].pop("instruction")  # a CSV row with the instruction cell left empty
    for i, contact in ((10, "sam.lee@example.com"), (77, "+1 415-555-0132")):
        second[i]["input"] += f" You can reach me at {contact}."  # personal data, for the PII scan

    return {
        "2026-01-05": ("tickets.jsonl", first),
        "2026-01-12": ("tickets.csv", second),
        "2026-01-19": ("tickets.jsonl", third),
        "2026-01-26": ("preferences.jsonl", [preference_pair(preference_rng) for _ in range(PREFERENCE_PAIRS)]),
    }


def render(name: str, rows: list[dict]) -> str:
    if name.endswith(".jsonl"):
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["instruction", "input", "output"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def rendered_files() -> dict[Path, str]:
    return {LANDING / d / name: render(name, rows) for d, (name, rows) in drops().items()}


def main() -> int:
    for path, text in rendered_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
