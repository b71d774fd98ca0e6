"""Scraping a metrics endpoint the way Prometheus does, for the metrics tests: an HTTP GET
and prometheus_client's own exposition parser."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
CYCLE = 0.11
"""The simulated station's cycle, seconds. Not a multiple of the tests' 20 ms poll: the polls'
phases walk through the short cycle-complete window, so parts are seen (with 100 ms they
could miss it every cycle)."""


class Scrape:
    """One scrape, parsed by prometheus_client's parser (the text format Prometheus reads)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, name: str) -> list[Sample]:
        return [s for f in self.families.values() for s in f.samples if s.name == name]

    def value(self, name: str, **labels: str) -> float:
        """The one sample of ``name`` whose labels include ``labels``."""
        found = [s for s in self.samples(name) if labels.items() <= s.labels.items()]
        assert len(found) == 1, f"{name}{labels}: {found}"
        return found[0].value

    def documented_names(self) -> set[str]:
        """Each family as docs/metrics.md names it: the sample name a query uses."""
        return {
            f"{f.name}_total" if f.type == "counter" else f.name for f in self.families.values()
        }


def get_url(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def get(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    """An HTTP GET from a thread, as a scraper would (the agent answers from its loop)."""
    return await asyncio.to_thread(get_url, f"http://127.0.0.1:{port}{path}")


def scrape_now(port: int) -> Scrape:
    """A scrape from this thread (for an endpoint served by threads, the trace store's)."""
    status, ctype, text = get_url(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    return Scrape(text)


async def scrape(port: int) -> Scrape:
    """A scrape from a thread, so that an endpoint in this event loop can answer."""
    return await asyncio.to_thread(scrape_now, port)
