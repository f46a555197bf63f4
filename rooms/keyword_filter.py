"""A multi-pattern keyword matcher (Aho-Corasick) for the rooms' word filter. Pure, no I/O.

Theory of operation
-------------------
The words are folded (fullwidth ASCII to ASCII, then lower case) and put in a trie. A breadth-
first pass computes each node's failure link (the longest proper suffix of its path that is also
a path of the trie) and, from it, a compact transition table: ``delta[s]`` maps a character to the
next state for every character that leaves ``s`` *or one of the states on its failure chain other
than the root*; the root's own transitions are looked up separately. So the scan is one or two
dict lookups per character whatever the number of words: matching a 30-character comment costs
the same with 50 words as with 50,000. ``out_len[s]`` is the length of the longest word ending at
``s`` (following the failure chain), 0 when none does.

Matching is on substrings (danmaku are mostly CJK, which has no word boundaries), on the folded
text, which has exactly one character per character of the original (a text whose lower-case
form changes length, such as one with a dotted capital I, is folded character by character), so
the spans found map one to one onto the original text for masking.

Guarantees: ``find`` and ``mask`` never raise for any ``str``; building is O(total length of
the words); scanning is O(len(text)).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from typing import Final

MAX_WORD_CHARS: Final = 64
MASK_CHAR: Final = "*"

# Fullwidth ASCII variants (U+FF01..U+FF5E) fold to ASCII, and the ideographic space to a space.
_FOLD: Final = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
# str.translate with a dict costs ~1 us for a short CJK text; most texts have nothing to fold,
# and a search for the folded characters is ten times cheaper (this runs for every message).
_FOLDABLE: Final = re.compile("[\uff01-\uff5e\u3000]")


def fold(text: str) -> str:
    """The form words and texts are compared in; always ``len(fold(t)) == len(t)``."""
    if _FOLDABLE.search(text) is not None:
        text = text.translate(_FOLD)
    folded = text.lower()
    if len(folded) == len(text):
        return folded
    # Rare: a character whose lower case is longer; fold per character, keeping one each.
    return "".join(low if len(low := ch.lower()) == 1 else ch for ch in text)


class KeywordMatcher:
    """Aho-Corasick over a fixed set of words; build once, scan many texts."""

    __slots__ = ("__weakref__", "_delta", "_first_match", "_out_len", "_root", "words")

    def __init__(self, words: Iterable[str]) -> None:
        folded = {fold(w.strip()) for w in words}
        self.words: frozenset[str] = frozenset(w for w in folded if w)
        goto: list[dict[str, int]] = [{}]
        depth_out: list[int] = [0]
        for word in self.words:
            state = 0
            for ch in word:
                nxt = goto[state].get(ch)
                if nxt is None:
                    nxt = len(goto)
                    goto[state][ch] = nxt
                    goto.append({})
                    depth_out.append(0)
                state = nxt
            depth_out[state] = max(depth_out[state], len(word))
        fail = [0] * len(goto)
        delta: list[dict[str, int]] = [{} for _ in goto]
        order: deque[int] = deque()
        for child in goto[0].values():
            order.append(child)
        while order:
            state = order.popleft()
            f = fail[state]
            # Transitions of the failure chain below the root, then this state's own on top.
            row = dict(delta[f]) if f else {}
            row.update(goto[state])
            delta[state] = row
            if depth_out[f] > depth_out[state]:
                depth_out[state] = depth_out[f]
            for ch, child in goto[state].items():
                order.append(child)
                g = f
                target = 0
                while True:
                    step = goto[g].get(ch)
                    if step is not None and step != child:
                        target = step
                        break
                    if g == 0:
                        break
                    g = fail[g]
                fail[child] = target
        # Renumber: states where a word ends get the highest ids, so the scan tests a match
        # with one integer comparison (``state >= self._first_match``). The root stays 0.
        ranked = [s for s in range(len(goto)) if not depth_out[s]]
        self._first_match = len(ranked)
        ranked += [s for s in range(len(goto)) if depth_out[s]]
        new_id = [0] * len(ranked)
        for i, s in enumerate(ranked):
            new_id[s] = i
        self._delta = [{ch: new_id[t] for ch, t in delta[s].items()} for s in ranked]
        self._root = {ch: new_id[t] for ch, t in goto[0].items()}
        self._out_len = [depth_out[s] for s in ranked]

    def __len__(self) -> int:
        return len(self.words)

    def contains(self, text: str) -> bool:
        """Whether any word occurs in ``text`` (the deny mode's question; the fastest scan)."""
        return self.contains_folded(fold(text))

    def contains_folded(self, folded: str) -> bool:
        """``contains`` for a text already folded (``fold``), so a caller folds only once."""
        if not self.words:
            return False
        delta, root, first_match = self._delta, self._root, self._first_match
        state = 0
        for ch in folded:
            if state:
                nxt = delta[state].get(ch)
                state = root.get(ch, 0) if nxt is None else nxt
            else:  # most characters are read at the root: one lookup, not two
                state = root.get(ch, 0)
            if state >= first_match:
                return True
        return False

    def find(self, text: str) -> tuple[int, int] | None:
        """The first match as ``(start, end)`` (end exclusive) in ``text``, or None."""
        if not self.words:
            return None
        delta, root, out_len = self._delta, self._root, self._out_len
        state = 0
        for i, ch in enumerate(fold(text)):
            nxt = delta[state].get(ch)
            state = root.get(ch, 0) if nxt is None else nxt
            if out_len[state]:
                return i + 1 - out_len[state], i + 1
        return None

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Every maximal matched region, merged, as ``(start, end)`` pairs in order."""
        if not self.words:
            return []
        delta, root, out_len = self._delta, self._root, self._out_len
        out: list[tuple[int, int]] = []
        state = 0
        for i, ch in enumerate(fold(text)):
            nxt = delta[state].get(ch)
            state = root.get(ch, 0) if nxt is None else nxt
            n = out_len[state]
            if n:
                start, end = i + 1 - n, i + 1
                # A long word may cover several earlier regions: merge all it touches.
                while out and start <= out[-1][1]:
                    start = min(start, out.pop()[0])
                out.append((start, end))
        return out

    def mask(self, text: str) -> str | None:
        """``text`` with every matched character replaced by ``*``; None when nothing matched."""
        spans = self.spans(text)
        if not spans:
            return None
        parts: list[str] = []
        at = 0
        for start, end in spans:
            parts.append(text[at:start])
            parts.append(MASK_CHAR * (end - start))
            at = end
        parts.append(text[at:])
        return "".join(parts)


EMPTY_MATCHER: Final = KeywordMatcher(())
