"""Retrieval for RAG: documents -> token chunks with overlap -> BM25 / dense (all-MiniLM-L6-v2) / hybrid top-k,
saved as an index folder (beside a bank: BANK/index) that is rebuilt when the documents change."""

from loramem.retrieval.chunking import Chunk, chunk_document, chunk_documents, windows
from loramem.retrieval.corpus import Document, as_documents, corpus_hash, read_documents
from loramem.retrieval.index import BANK_INDEX_DIR, Hit, Index, bank_index, ensure_index, index_dir_for_bank

__all__ = ["BANK_INDEX_DIR", "Chunk", "bank_index", "Document", "Hit", "Index", "as_documents", "chunk_document",
           "chunk_documents", "corpus_hash", "ensure_index", "index_dir_for_bank", "read_documents", "windows"]
