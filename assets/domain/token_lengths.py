"""How many tokens a formatted example is: exactly the count of the tokenizer's own
`apply_chat_template` + `tokenizer(text, add_special_tokens=False)`, computed fast.

Validation measures every row of a landing; through the tokenizer's own calls a million Dolly rows
took about five minutes, most of it inside the tokenizer building token objects only to be counted.
Two facts of byte-level BPE tokenizers (GPT-2 style, as SmolLM2's) make counting cheap:

- the text is split at added tokens (`<|im_start|>`: one token each), each part then into pieces
  by the GPT-2 split pattern, and BPE never merges across pieces: a text's count is its added
  tokens plus the sum of its pieces' counts;
- pieces are mostly words, which repeat: each piece's count comes from the tokenizer's own BPE
  model the first time it is seen, and is remembered.

The split pattern runs in Python (`re` for ASCII text, `regex` otherwise). It makes the tokenizer's
own pieces exactly when both engines put each character in the same class (letter, number,
whitespace, other), so every character is checked once against the tokenizer's pre-tokenizer
before a text holding it is counted this way; a text with a character they disagree on, and every
tokenizer of another kind, is counted by the tokenizer itself. Likewise the chat template: the
bundled model's ChatML template is rendered by plain string building (`chatml_text`), any other
template by `apply_chat_template`. `tests/test_token_lengths.py` compares both ways on varied rows.
"""

import re
import weakref
from functools import cache

import regex

from assets.domain.tool_calls import render_messages, render_text

# The bundled base model's (SmolLM2-Instruct's) chat template, verbatim (its string literals hold real
# newlines): `chatml_text` renders it.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# The split pattern of byte-level pre-tokenizers (GPT-2's), and the same for ASCII text with the
# classes spelled out, for `re` (several times faster than `regex`).
GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
_WS = r"\t\n\x0b\x0c\r "
ASCII_SPLIT = re.compile(
    rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
)
# Texts that one character class check covers: how each character of a probe splits.
PROBES = ("a{}", "1{}", "!{}", " {}a", "{}{} ")
# Piece counts remembered at most; the memory is emptied when full (a landing's numbers and names
# would otherwise grow it without end). About 40 MB when full, plus one call's new pieces.
MAX_PIECES = 200_000
# Texts the tokenizer counts per call, for those it counts itself: only lengths are kept.
TOKENIZE_CHUNK = 2048


def chatml_text(messages: list[dict]) -> str:
    """`messages` (plain role/content turns) as `SMOLLM2_CHAT_TEMPLATE` renders them."""
    if not messages:
        return ""
    head = "" if messages[0]["role"] == "system" else f"<|im_start|>system\n{SMOLLM2_DEFAULT_SYSTEM}<|im_end|>\n"
    return head + "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


@cache
def byte_chars() -> dict[int, str]:
    """Byte-level BPE's alphabet: each byte as the printable character that stands for it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def piece_counting_backend(tokenizer):
    """The tokenizer's Rust backend when its counts are sums over GPT-2 pieces (a byte-level BPE
    with no normalizer, no prefix space and added tokens matched verbatim), else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is not None or getattr(backend, "encode_special_tokens", True):
        return None
    pre, model = backend.pre_tokenizer, backend.model
    if type(pre).__name__ != "ByteLevel" or pre.add_prefix_space or not pre.use_regex:
        return None
    if type(model).__name__ != "BPE" or model.dropout is not None:
        return None
    added = backend.get_added_tokens_decoder().values()
    if any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in added):
        return None
    return backend


class TokenLengths:
    """Counts the tokens of formatted examples for one tokenizer; see the module docstring.
    Get one with `token_lengths(tokenizer)`, which keeps one per tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.chatml = getattr(tokenizer, "chat_template", None) == SMOLLM2_CHAT_TEMPLATE
        self.backend = piece_counting_backend(tokenizer)
        self.pieces: dict[str, int] = {}
        self.added, self.ascii_ok = None, False
        self.checked: set[str] = set()
        self.disagreeing: set[str] = set()
        """characters the Python split pattern may class otherwise than the tokenizer: texts holding
        one are counted by the tokenizer"""
        if self.backend is not None:
            added = sorted((t.content for t in self.backend.get_added_tokens_decoder().values()), key=len, reverse=True)
            # Longest first: at one position the longest added token wins, as in the tokenizer.
            self.added = re.compile("|".join(map(re.escape, added))) if added else None
            self.ascii_ok = all(self._agrees(chr(c), ASCII_SPLIT) for c in range(128))

    def render(self, messages: list[dict], tools: list | None = None) -> str:
        """The conversation as the tokenizer's chat template makes it (tools as training renders them)."""
        if self.chatml and messages:  # an empty one goes to the tokenizer, which refuses it
            return chatml_text(render_messages(messages, tools))
        return render_text(self.tokenizer, messages, tools)

    def of(self, conversations: list[list[dict]], tools: list | None = None, chunk: int = TOKENIZE_CHUNK) -> list[int]:
        """Token count of each conversation with the chat template applied (`tools[i]` for conversation i)."""
        tools = tools or [None] * len(conversations)
        return self.count([self.render(c, t) for c, t in zip(conversations, tools)], chunk)

    def count(self, texts: list[str], chunk: int = TOKENIZE_CHUNK) -> list[int]:
        """Token count of each text, as `tokenizer(texts, add_special_tokens=False)` counts it; the
        texts left to the tokenizer go `chunk` at a time (only their lengths are kept)."""
        if len(self.pieces) >= MAX_PIECES:  # emptied between calls only: a call's pieces stay known
            self.pieces.clear()
        counts = [self._pieces_count(t) if self.backend is not None else None for t in texts]
        left = [i for i, n in enumerate(counts) if n is None]
        for start in range(0, len(left), chunk):
            part = left[start : start + chunk]
            ids = self.tokenizer([texts[i] for i in part], add_special_tokens=False)["input_ids"]
            for i, row in zip(part, ids):
                counts[i] = len(row)
        return counts

    def _pieces_count(self, text: str) -> int | None:
        """The count as added tokens plus pieces, or None when a character may split otherwise."""
        if not (self.ascii_ok and text.isascii()) and not self._splits_alike(text):
            return None
        parts = self.added.split(text) if self.added else [text]
        known, total = self.pieces, len(parts) - 1
        for part in parts:  # each part is split on its own, so ASCII parts take the faster pattern
            pieces = (ASCII_SPLIT if self.ascii_ok and part.isascii() else GPT2_SPLIT).findall(part)
            try:  # all pieces known: summed without a Python loop
                total += sum(map(known.__getitem__, pieces))
            except KeyError:
                self._learn(pieces)
                total += sum(map(known.__getitem__, pieces))
        return total

    def _splits_alike(self, text: str) -> bool:
        """Whether `GPT2_SPLIT` classes every character of `text` as the tokenizer does (each new
        character checked once)."""
        chars = set(text)
        for char in chars.difference(self.checked):
            self.checked.add(char)
            if not self._agrees(char, GPT2_SPLIT):
                self.disagreeing.add(char)
        return self.disagreeing.isdisjoint(chars)

    def _learn(self, pieces: list[str]) -> None:
        """Remember the count of each of `pieces` not known yet, from the tokenizer's BPE model."""
        chars, tokenize = byte_chars(), self.backend.model.tokenize
        for piece in set(pieces).difference(self.pieces):
            self.pieces[piece] = len(tokenize("".join(chars[b] for b in piece.encode())))

    def _agrees(self, char: str, split) -> bool:
        """Whether `split` cuts every probe holding `char` where the tokenizer's pre-tokenizer does."""
        for probe in (p.format(char, char) for p in PROBES):
            try:
                theirs = [span for _, span in self.backend.pre_tokenizer.pre_tokenize_str(probe)]
            except Exception:  # e.g. a lone surrogate: leave the text to the tokenizer, which decides
                return False
            if [m.span() for m in split.finditer(probe)] != theirs:
                return False
        return True


# One per tokenizer, dropped with it: the piece counts learnt on one batch serve the next.
_BY_TOKENIZER: "weakref.WeakKeyDictionary[object, TokenLengths]" = weakref.WeakKeyDictionary()


def token_lengths(tokenizer) -> TokenLengths:
    """The `TokenLengths` of `tokenizer`, made on first use and kept as long as the tokenizer lives."""
    try:
        lengths = _BY_TOKENIZER.get(tokenizer)
        if lengths is None:
            lengths = _BY_TOKENIZER[tokenizer] = TokenLengths(tokenizer)
    except TypeError:  # a tokenizer that cannot be weakly referenced: no memory across calls
        lengths = TokenLengths(tokenizer)
    return lengths
