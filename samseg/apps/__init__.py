"""The apps: the CLI (samseg.apps.cli) and the web UI (samseg.apps.ui), thin adapters over the
engine. What both say alike is here."""


def count(n: int, noun: str) -> str:
    """"1 class", "2 classes", "0 images": a count and its noun, the singular for one (the CLI's
    lines and the UI's pages, as the `count` template filter)."""
    return f"{n} {noun if n == 1 else noun + ('es' if noun.endswith(('s', 'sh', 'ch', 'x')) else 's')}"
