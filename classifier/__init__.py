"""Message classification: tokenizer, pipeline, training, evaluation and the model store."""
