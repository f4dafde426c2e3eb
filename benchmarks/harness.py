"""What benchmark runs set up the same way: a free local port, a synthetic packed batch."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (for a torchrun / process-group master)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def packed_documents(vocab_size: int, batch: int, seq: int, documents: int = 4) -> dict:
    """``batch`` rows of ``seq`` random tokens, each row ``documents`` equal documents (positions
    restart per document), next-token labels: the model inputs of a document-causal step."""
    import torch

    ids = torch.randint(0, vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    length = seq // documents
    return dict(input_ids=ids, position_ids=torch.arange(seq).remainder(length).expand(batch, seq),
                document_ids=torch.arange(seq).div(length, rounding_mode="floor").expand(batch, seq),
                labels=ids.roll(-1, 1))
