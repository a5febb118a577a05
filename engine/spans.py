"""Token offsets as character spans of the context: how answers are labelled, scored and returned."""
from __future__ import annotations

import unicodedata

# Characters that continue the one before them: accents, vowel signs and other combining marks, and
# the zero-width (non-)joiners. An accent-stripping tokenizer (uncased BERT) drops the marks, so its
# offsets end before them: "café" written with U+0301 would come back as "cafe".
_CONTINUATION_CATEGORIES = frozenset({"Mn", "Mc", "Me"})
_JOINERS = frozenset({"\u200c", "\u200d"})


def span_end(text: str, end: int) -> int:
    """`end` (exclusive) moved past the combining marks and joiners that follow it in `text`."""
    while end < len(text) and (text[end] in _JOINERS or unicodedata.category(text[end]) in _CONTINUATION_CATEGORIES):
        end += 1
    return end


def context_offsets(offsets, sequence_ids, context_id: int, context: str) -> list:
    """One tokenized window's offsets as character spans of `context`: None for a token outside the
    context (question, special tokens, padding), each context token's end moved over the marks that
    follow it. engine.qa reads spans through this; the tokenize stage applies span_end to each context's
    tokens once, for every window cut from them."""
    return [(start, span_end(context, end)) if sequence_ids[k] == context_id else None
            for k, (start, end) in enumerate(offsets)]
