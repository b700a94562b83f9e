"""How a BYTES `text` element of an embedding model carries token ids instead of text: a 0x00 byte
followed by little-endian int32 ids (what /v1/embeddings sends for token-array inputs)."""

from __future__ import annotations

import struct

TOKEN_IDS_MARK = b"\x00"


def encode_token_ids(ids: list[int]) -> bytes:
    return TOKEN_IDS_MARK + struct.pack(f"<{len(ids)}i", *ids)
