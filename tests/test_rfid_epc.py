"""EPC hex -> what it identifies, per the GS1 EPC Tag Data Standard (decoded by epcpy).

The vectors are the TDS's own encoding examples (GS1 company prefix 0614141, filter 3): the
SGTIN-96 one (TDS Annex E, ``3074257BF7194E4000001A85``) is reproduced by every independent
implementation we looked at; the others are the per-scheme examples as GS1's Tag Data
Translation tests carry them (with the standard's known typos corrected there). EPCs longer
than 96 bits are padded with zero bits to whole 16-bit words, as a reader reports them.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.rfid.epc import EpcInfo, decode_epc
from tests.rfid_helpers import VECTORS


@pytest.mark.parametrize(
    ("hex_", "scheme", "uri", "tag_uri", "filter_", "ais"),
    VECTORS,
    ids=[v[1] for v in VECTORS],
)
def test_tds_examples_decode(
    hex_: str,
    scheme: str,
    uri: str,
    tag_uri: str,
    filter_: int | None,
    ais: dict[str, str],
) -> None:
    info = decode_epc(hex_)
    assert (info.scheme, info.uri, info.tag_uri, info.filter) == (scheme, uri, tag_uri, filter_)
    assert dict(info.ais) == ais
    assert info.canonical
    assert info.error is None
    assert info.decoded
    assert info.identifier == uri
    assert info.hex == hex_


def test_sgtin_fields_for_context_rules() -> None:
    info = decode_epc("3074257BF7194E4000001A85")
    assert (info.gtin, info.serial, info.product) == ("80614141123458", "6789", "80614141123458")
    assert info.element_string == "(01)80614141123458(21)6789"
    assert info.fields() == {
        "epc": "3074257BF7194E4000001A85",
        "identifier": "urn:epc:id:sgtin:0614141.812345.6789",
        "scheme": "sgtin-96",
        "uri": "urn:epc:id:sgtin:0614141.812345.6789",
        "tag_uri": "urn:epc:tag:sgtin-96:3.0614141.812345.6789",
        "filter": "3",
        "element_string": "(01)80614141123458(21)6789",
        "gtin": "80614141123458",
        "serial": "6789",
        "01": "80614141123458",
        "21": "6789",
    }


@pytest.mark.parametrize(
    ("hex_", "name", "value"),
    [
        ("3174257BF4499602D2000000", "sscc", "106141412345678908"),
        ("3274257BF46072000000162E", "gln", "0614141123452"),
        ("3274257BF46072000000162E", "gln_extension", "5678"),
        ("3374257BF40C0E400000162E", "grai", "006141411234525678"),
        ("3474257BF40000000000162E", "giai", "06141415678"),
        ("2D74257BF4499602D2000000", "gsrn", "061414112345678902"),
        ("2C74257BF46072000000162E", "gdti", "06141411234525678"),
    ],
)
def test_each_key_has_a_named_field(hex_: str, name: str, value: str) -> None:
    info = decode_epc(hex_)
    assert getattr(info, name) == value
    assert info.fields()[name] == value
    assert info.product is None
    assert info.serial is None


UNDECODABLE = [
    ("000000000000000000000000", "all zeros: an unprogrammed tag"),
    (
        "E2801160600002054CC2096F",  # a chip's factory EPC (TID-like), not GS1
        "unknown EPC header E2 (not a GS1 EPC scheme: a chip's factory EPC or a proprietary "
        "encoding)",
    ),
    ("FFFFFFFFFFFFFFFFFFFFFFFF", "unknown EPC header FF"),
    (
        "3074257BF7",  # a line cut short
        "header 30 is SGTIN, but the bits are not a valid one: Invalid binary size, "
        "expected (>=): 96 actual: 40",
    ),
    ("3077257BF7194E4000001A85", "header 30 is SGTIN, but the bits are not a valid one"),
    ("3674257BF6B7A659B2C2BF10", "header 36 is SGTIN, but the bits are not a valid one"),
    ("XYZ", "EPC 'XYZ' is not hexadecimal"),
    ("", "empty EPC"),
    ("307", "EPC 307 has an odd number of hex digits (3)"),
]


@pytest.mark.parametrize(("hex_", "error"), UNDECODABLE)
def test_undecodable_epcs_keep_their_hex_as_identity(hex_: str, error: str) -> None:
    info = decode_epc(hex_)
    assert info.error is not None
    assert info.error.startswith(error)
    assert info.scheme is None
    assert info.uri is None
    assert not info.decoded
    assert info.identifier == hex_
    assert info.fields() == {"epc": hex_, "identifier": hex_}


def test_a_non_canonical_encoding_is_decoded_but_flagged() -> None:
    # SSCC-96 with its 24 unallocated bits set: the identity is there, the encoding is not TDS.
    info = decode_epc("3174257BF4499602D20000FF")
    assert info.scheme == "sscc-96"
    assert info.sscc == "106141412345678908"
    assert not info.canonical
    assert (info.tag_uri, info.filter, info.error) == (None, None, None)


def test_case_and_spaces_do_not_matter() -> None:
    spaced = decode_epc("3074 257b f719 4e40 0000 1a85")
    assert spaced == decode_epc("3074257BF7194E4000001A85")
    assert spaced.hex == "3074257BF7194E4000001A85"


def test_results_are_immutable_and_cached() -> None:
    info = decode_epc("3174257BF4499602D2000000")
    with pytest.raises(TypeError):
        info.ais["00"] = "x"  # type: ignore[index]
    assert decode_epc("3174257BF4499602D2000000") is info
    assert hash(info) == hash(decode_epc("3174257BF4499602D2000000"))
    assert isinstance(info, EpcInfo)


HEADERS = ["2C", "2D", "2E", "2F", "30", "31", "32", "33", "34", "35", "36", "37", "38", "39"]
HEADERS += ["3B", "3C", "3D", "3E", "3F", "40", "41", "00", "E2", "FF"]


@settings(max_examples=300, deadline=None)
@given(
    header=st.sampled_from(HEADERS),
    body=st.text(alphabet="0123456789ABCDEF", min_size=0, max_size=60),
)
def test_any_hex_decodes_or_says_why(header: str, body: str) -> None:
    info = decode_epc(header + body)
    assert (info.scheme is None) == (info.error is not None)
    if info.decoded:
        assert info.uri is not None
        assert info.uri.startswith("urn:epc:id:")
        assert info.canonical == (info.tag_uri is not None)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_any_text_decodes_or_says_why(text: str) -> None:
    info = decode_epc(text)
    assert (info.scheme is None) == (info.error is not None)
