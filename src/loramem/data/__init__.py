"""Benchmarks and loaders: PhoneBook, CounterFact, PaperQA and user documents."""
