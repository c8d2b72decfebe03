"""CRC-32C (Castagnoli), the reference of ``strata._native.crc32c``.

References: RFC 3720 appendix B.4 (polynomial 0x1EDC6F41, reflected 0x82F63B78; check value
of "123456789" is 0xE3069283); MS-VHDX 2.2 (every VHDX checksum is CRC-32C).
"""

from __future__ import annotations

POLY = 0x82F63B78


def _table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ POLY if c & 1 else c >> 1
        table.append(c)
    return table


TABLE = _table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C of ``data``, continuing from ``crc`` (the value of what came before)."""
    c = crc ^ 0xFFFFFFFF
    for byte in memoryview(data).cast("B"):
        c = TABLE[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF
