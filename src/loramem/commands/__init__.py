"""CLI verbs by area (bank, docs, rag, serve, ...). Each module imports `app`/`bench_app` from loramem.cli and
registers its commands; loramem.cli imports every module here at start-up."""
