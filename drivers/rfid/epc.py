"""What an EPC read from a tag identifies: the GS1 EPC Tag Data Standard decoding, by epcpy.

Why: a station's context rules want the part's GTIN and serial (or the pallet's SSCC, the
returnable asset's GRAI), not 96 bits of hex. The bit layouts (headers, filters, partition
tables, 7-bit strings) are epcpy's job and are never decoded here by hand; this module asks
epcpy, checks its answer, and returns the fields a rule can bind.

:func:`decode_epc` takes the hex of the EPC (96 bits or more, as readers report it: whole
16-bit words, so SGTIN-198 comes padded to 208 bits) and returns an :class:`EpcInfo`:

* ``scheme``: the TDS coding scheme (``sgtin-96``, ``sscc-96``, ``grai-170``, ...), ``uri`` the
  pure identity (``urn:epc:id:sgtin:0614141.812345.6789``), ``tag_uri`` the tag URI with
  the filter value (``urn:epc:tag:sgtin-96:3.0614141.812345.6789``).
* For GS1 keys, ``element_string`` (``(01)80614141123458(21)6789``, from epcpy) and ``ais``,
  that element string parsed by biip into AI -> value, the same AIs a GS1 barcode rule uses
  (``01`` GTIN, ``21`` serial, ``00`` SSCC, ``8003`` GRAI, ``8004`` GIAI, ``414``/``254``
  GLN and extension, ``8018`` GSRN, ``253`` GDTI). Properties name the common ones
  (``gtin``, ``serial``, ``sscc``, ``grai``, ``giai``, ``gln``, ...).
* Every scheme epcpy decodes is accepted (SGTIN, SSCC, SGLN, GRAI, GIAI, GSRN, GSRNP, GDTI,
  SGCN, CPI, ITIP, GID, ADI, USDOD); the tests pin SGTIN-96/198, SSCC-96, SGLN-96/195,
  GRAI-96/170, GIAI-96/202, GSRN-96, GDTI-96 and GID-96 to the TDS examples.
* An EPC epcpy cannot decode (the unprogrammed all-zero tag, a chip's factory EPC that is not
  GS1, a length too short for its header) gives ``scheme=None`` and ``error`` saying why; the
  hex is still the tag's identity (``identifier``), so such tags can be traced as they are.
* The decoded identity is re-encoded with epcpy to find the filter value and the tag URI. An
  EPC whose bits do not come back (reserved bits set, a value outside the scheme's range) is
  still decoded, with ``canonical=False`` and no tag URI or filter: the identity is usable,
  but the tag was encoded off-standard, which a commissioning check may want to flag.

What a context rule typically binds: ``serial`` <- ``serial`` (SGTIN; unique together with the
GTIN) or ``sscc``/``grai``/``giai``, or ``identifier`` for any tag; ``product`` <- ``gtin``.
:meth:`EpcInfo.fields` lists every available field by name and AI.

Results are cached (bounded LRU): a tag is decoded once per arrival, and the same few tags
come back all day.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

from biip import ParseError
from biip.gs1_messages import GS1Message
from epcpy.epc_schemes.adi import ADIFilterValue
from epcpy.epc_schemes.base_scheme import GS1Element, TagEncodable
from epcpy.epc_schemes.cpi import CPIFilterValue
from epcpy.epc_schemes.gdti import GDTIFilterValue
from epcpy.epc_schemes.giai import GIAIFilterValue
from epcpy.epc_schemes.grai import GRAIFilterValue
from epcpy.epc_schemes.gsrn import GSRNFilterValue
from epcpy.epc_schemes.gsrnp import GSRNPFilterValue
from epcpy.epc_schemes.itip import ITIPFilterValue
from epcpy.epc_schemes.sgcn import SGCNFilterValue
from epcpy.epc_schemes.sgln import SGLNFilterValue
from epcpy.epc_schemes.sgtin import SGTINFilterValue
from epcpy.epc_schemes.sscc import SSCCFilterValue
from epcpy.epc_schemes.usdod import USDODFilterValue
from epcpy.utils.common import ConvertException, hex_to_binary
from epcpy.utils.parsers import TAG_ENCODABLE_HEX_HEADERS, hex_to_tag_encodable

from drivers.rfid.reads import epc_problem

__all__ = ["EpcInfo", "decode_epc"]

CACHE_SIZE = 4096

_FILTERS: dict[str, type[Enum]] = {
    "ADI": ADIFilterValue,
    "CPI": CPIFilterValue,
    "GDTI": GDTIFilterValue,
    "GIAI": GIAIFilterValue,
    "GRAI": GRAIFilterValue,
    "GSRN": GSRNFilterValue,
    "GSRNP": GSRNPFilterValue,
    "ITIP": ITIPFilterValue,
    "SGCN": SGCNFilterValue,
    "SGLN": SGLNFilterValue,
    "SGTIN": SGTINFilterValue,
    "SSCC": SSCCFilterValue,
    "USDOD": USDODFilterValue,
}
"""epcpy's filter value enum per scheme class name; a scheme missing here (GID) has none."""

_NAMED_AIS = {
    "gtin": "01",
    "serial": "21",
    "sscc": "00",
    "grai": "8003",
    "giai": "8004",
    "gln": "414",
    "gln_extension": "254",
    "gsrn": "8018",
    "gdti": "253",
}
"""Field name -> the GS1 AI it comes from."""


@dataclass(frozen=True)
class EpcInfo:
    """One EPC, decoded as far as it goes. Build with :func:`decode_epc`."""

    hex: str
    """The EPC, upper-case hex, as read."""
    scheme: str | None = None
    """TDS coding scheme, e.g. ``sgtin-96``; None when the EPC could not be decoded."""
    uri: str | None = None
    """Pure identity URI, ``urn:epc:id:...``."""
    tag_uri: str | None = None
    """Tag URI with the filter value, ``urn:epc:tag:...``; None unless ``canonical``."""
    filter: int | None = None
    """The filter value (e.g. 1 point of sale item, 2 case...); None unless ``canonical``."""
    element_string: str | None = None
    """GS1 element string, human-readable form ``(01)...(21)...``, for GS1 keys."""
    ais: Mapping[str, str] = field(default_factory=dict, hash=False)
    """``element_string`` parsed: GS1 AI -> value (read-only)."""
    canonical: bool = False
    """Whether re-encoding the decoded identity gives these bits back."""
    error: str | None = None
    """Why the EPC could not be decoded (``scheme`` is None then)."""

    @property
    def decoded(self) -> bool:
        return self.scheme is not None

    @property
    def identifier(self) -> str:
        """The tag's identity: the pure identity URI, or the hex when not decodable."""
        return self.uri if self.uri is not None else self.hex

    @property
    def gtin(self) -> str | None:
        return self.ais.get("01")

    @property
    def serial(self) -> str | None:
        """The SGTIN's serial number (AI 21); unique only together with the GTIN."""
        return self.ais.get("21")

    @property
    def sscc(self) -> str | None:
        return self.ais.get("00")

    @property
    def grai(self) -> str | None:
        """The full GRAI (AI 8003: 0, company prefix and asset type, check digit, serial)."""
        return self.ais.get("8003")

    @property
    def giai(self) -> str | None:
        return self.ais.get("8004")

    @property
    def gln(self) -> str | None:
        return self.ais.get("414")

    @property
    def gln_extension(self) -> str | None:
        return self.ais.get("254")

    @property
    def gsrn(self) -> str | None:
        return self.ais.get("8018")

    @property
    def gdti(self) -> str | None:
        return self.ais.get("253")

    @property
    def product(self) -> str | None:
        """What a rule binds as the product: the GTIN, for SGTIN tags."""
        return self.gtin

    def fields(self) -> dict[str, str]:
        """Every known field by name (``epc``, ``identifier``, ``scheme``, ``uri``,
        ``tag_uri``, ``filter``, ``element_string``, ``gtin``, ``serial``, ``sscc``, ...)
        and by GS1 AI (``01``, ``21``, ...); absent ones are left out."""
        out: dict[str, str] = {"epc": self.hex, "identifier": self.identifier}
        plain: dict[str, str | int | None] = {
            "scheme": self.scheme,
            "uri": self.uri,
            "tag_uri": self.tag_uri,
            "filter": self.filter,
            "element_string": self.element_string,
        }
        out.update({k: str(v) for k, v in plain.items() if v is not None})
        out.update({name: self.ais[ai] for name, ai in _NAMED_AIS.items() if ai in self.ais})
        out.update(self.ais)
        return out


@functools.lru_cache(maxsize=CACHE_SIZE)
def decode_epc(epc_hex: str) -> EpcInfo:
    """Decode the hex of an EPC (see the module doc). Never raises for any string."""
    hx = "".join(epc_hex.split()).upper()
    why = epc_problem(hx)
    if why is not None:
        return EpcInfo(hex=hx, error=why)
    try:
        scheme = hex_to_tag_encodable(hx)
    except ConvertException as exc:
        return EpcInfo(hex=hx, error=_undecodable(hx, exc))
    except ValueError as exc:  # epcpy's int() on a malformed field; none seen, kept safe
        return EpcInfo(hex=hx, error=f"epcpy could not decode it: {exc}")

    bits = hex_to_binary(hx)
    coding = type(scheme).header_to_schemes()[bits[:8]]
    tag_uri, filter_value = _reencode(scheme, coding, bits)
    element_string, ais = _element_string(scheme)
    return EpcInfo(
        hex=hx,
        scheme=str(coding.value),
        uri=scheme.epc_uri,
        tag_uri=tag_uri,
        filter=filter_value,
        element_string=element_string,
        ais=MappingProxyType(ais),
        canonical=tag_uri is not None,
    )


def _undecodable(hx: str, exc: ConvertException) -> str:
    message = exc.message or str(exc)
    header = hx[:2]
    if set(hx) == {"0"}:
        return "all zeros: an unprogrammed tag"
    known = TAG_ENCODABLE_HEX_HEADERS.get(header)
    if known is None:
        return (
            f"unknown EPC header {header} (not a GS1 EPC scheme: a chip's factory EPC "
            "or a proprietary encoding)"
        )
    return f"header {header} is {known.__name__}, but the bits are not a valid one: {message}"


def _reencode(scheme: TagEncodable, coding: Enum, bits: str) -> tuple[str | None, int | None]:
    """Re-encode with each filter value; the one giving ``bits`` back yields the tag URI.
    (None, None) when none does: not a canonical encoding."""
    filters = _FILTERS.get(type(scheme).__name__)
    options: list[dict[str, Any]] = (
        [{"binary_coding_scheme": coding}]
        if filters is None
        else [{"binary_coding_scheme": coding, "filter_value": f} for f in filters]
    )
    for kwargs in options:
        try:
            if bits.startswith(scheme.binary(**kwargs)):
                tag_uri = scheme.tag_uri(**kwargs)
                value = kwargs.get("filter_value")
                return tag_uri, None if value is None else int(value.value)
        except (ConvertException, ValueError):
            continue
    return None, None


def _element_string(scheme: TagEncodable) -> tuple[str | None, dict[str, str]]:
    if not isinstance(scheme, GS1Element):
        return None, {}
    try:
        text = scheme.gs1_element_string()
    except (ConvertException, ValueError, NotImplementedError):
        return None, {}
    try:
        message = GS1Message.parse_hri(text)
    except ParseError:
        return text, {}
    return text, {es.ai.ai: es.value for es in message.element_strings}
