"""Generation behind the service: `run` starts a generation and streams it back (the one entry point,
`start_generation`, behind `InferenceService.generate`; its `GenerationRun`), `catalog` answers what a
model generates or embeds with (tokenizer, vocabulary, model cards)."""
