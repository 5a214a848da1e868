"""Small media helpers shared by tests."""


def unique_copy(clip: bytes, tag: str) -> bytes:
    """The same decodable MP4 with a trailing 'free' box carrying `tag`: new sha256, same frames."""
    payload = tag.encode("utf-8")
    return clip + (8 + len(payload)).to_bytes(4, "big") + b"free" + payload
