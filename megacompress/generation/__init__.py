"""megacompress.generation: KV cache, sampling and batched generation (`generate`)."""
