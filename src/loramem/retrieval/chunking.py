"""Token chunking with overlap: a document becomes windows of `size` base-model tokens, each sharing `overlap`
tokens with the one before, with its exact text span (from the tokenizer's character offsets)."""

from __future__ import annotations

from dataclasses import dataclass

from loramem.errors import UserError
from loramem.retrieval.corpus import Document


@dataclass(frozen=True)
class Chunk:
    """A window of one document: tokens [start, end) and the text they cover."""

    doc: str
    index: int  # position of the chunk within its document
    start: int
    end: int
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc}#{self.index}"


def windows(n_tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Token ranges covering [0, n) with `size`-long windows that overlap by `overlap`; the last one ends at n."""
    if size < 1 or not 0 <= overlap < size:
        raise UserError(f"need chunk size >= 1 and 0 <= overlap < size (got size {size}, overlap {overlap})")
    if n_tokens <= 0:
        return []
    stride = size - overlap
    out = []
    start = 0
    while True:
        end = min(start + size, n_tokens)
        out.append((start, end))
        if end >= n_tokens:
            return out
        start += stride


def chunk_document(doc: Document, tokenizer, size: int = 128, overlap: int = 32) -> list[Chunk]:
    """The chunks of one document, counted in `tokenizer`'s tokens (a fast tokenizer: offsets are needed)."""
    enc = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    chunks = []
    for i, (a, b) in enumerate(windows(len(offsets), size, overlap)):
        text = doc.text[offsets[a][0] : offsets[b - 1][1]]
        chunks.append(Chunk(doc=doc.id, index=i, start=a, end=b, text=text))
    return chunks


def chunk_documents(docs: list[Document], tokenizer, size: int = 128, overlap: int = 32) -> list[Chunk]:
    return [c for d in docs for c in chunk_document(d, tokenizer, size, overlap)]
