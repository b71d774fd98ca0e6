"""RFID tests' EPC vectors: the GS1 Tag Data Standard's own encoding examples (GS1 company
prefix 0614141, filter 3), hex as a reader reports it -> what it identifies. See
``tests/test_rfid_epc.py`` for where each comes from."""

from __future__ import annotations


def words(hex_digits: str, bits: int) -> str:
    """``hex_digits`` padded with zeros to ``bits`` rounded up to whole 16-bit words."""
    return hex_digits.ljust((bits + 15) // 16 * 4, "0")


# hex, scheme, pure identity URI, tag URI, filter, AIs
VECTORS = [
    (
        "3074257BF7194E4000001A85",
        "sgtin-96",
        "urn:epc:id:sgtin:0614141.812345.6789",
        "urn:epc:tag:sgtin-96:3.0614141.812345.6789",
        3,
        {"01": "80614141123458", "21": "6789"},
    ),
    (
        words("3674257BF6B7A659B2C2BF1", 198),
        "sgtin-198",
        "urn:epc:id:sgtin:0614141.712345.32a%2Fb",
        "urn:epc:tag:sgtin-198:3.0614141.712345.32a%2Fb",
        3,
        {"01": "70614141123451", "21": "32a/b"},
    ),
    (
        "3174257BF4499602D2000000",
        "sscc-96",
        "urn:epc:id:sscc:0614141.1234567890",
        "urn:epc:tag:sscc-96:3.0614141.1234567890",
        3,
        {"00": "106141412345678908"},
    ),
    (
        "3274257BF46072000000162E",
        "sgln-96",
        "urn:epc:id:sgln:0614141.12345.5678",
        "urn:epc:tag:sgln-96:3.0614141.12345.5678",
        3,
        {"414": "0614141123452", "254": "5678"},
    ),
    (
        words("3974257BF46072CD9615F88", 195),
        "sgln-195",
        "urn:epc:id:sgln:0614141.12345.32a%2Fb",
        "urn:epc:tag:sgln-195:3.0614141.12345.32a%2Fb",
        3,
        {"414": "0614141123452", "254": "32a/b"},
    ),
    (
        "3374257BF40C0E400000162E",
        "grai-96",
        "urn:epc:id:grai:0614141.12345.5678",
        "urn:epc:tag:grai-96:3.0614141.12345.5678",
        3,
        {"8003": "006141411234525678"},
    ),
    (
        words("3774257BF40C0E59B2C2BF1", 170),
        "grai-170",
        "urn:epc:id:grai:0614141.12345.32a%2Fb",
        "urn:epc:tag:grai-170:3.0614141.12345.32a%2Fb",
        3,
        {"8003": "0061414112345232a/b"},
    ),
    (
        "3474257BF40000000000162E",
        "giai-96",
        "urn:epc:id:giai:0614141.5678",
        "urn:epc:tag:giai-96:3.0614141.5678",
        3,
        {"8004": "06141415678"},
    ),
    (
        words("3874257BF59B2C2BF1", 202),
        "giai-202",
        "urn:epc:id:giai:0614141.32a%2Fb",
        "urn:epc:tag:giai-202:3.0614141.32a%2Fb",
        3,
        {"8004": "061414132a/b"},
    ),
    (
        "2D74257BF4499602D2000000",
        "gsrn-96",
        "urn:epc:id:gsrn:0614141.1234567890",
        "urn:epc:tag:gsrn-96:3.0614141.1234567890",
        3,
        {"8018": "061414112345678902"},
    ),
    (
        "2C74257BF46072000000162E",
        "gdti-96",
        "urn:epc:id:gdti:0614141.12345.5678",
        "urn:epc:tag:gdti-96:3.0614141.12345.5678",
        3,
        {"253": "06141411234525678"},
    ),
    (
        "350007AB70425D4000000586",
        "gid-96",
        "urn:epc:id:gid:31415.271828.1414",
        "urn:epc:tag:gid-96:31415.271828.1414",
        None,
        {},
    ),
]
