"""Synthetic bar and pie charts with labelled values, and true questions about them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from fineharbor.demo.images import add_field, add_noise, draw_text_centered, font
from fineharbor.demo.scenes import NUMBERS, join_phrases

DOMAINS: dict[str, tuple[str, tuple[str, ...]]] = {
    "fruit": (
        "Fruit sales in tons",
        ("Apples", "Bananas", "Cherries", "Grapes", "Mangoes", "Pears"),
    ),
    "cities": ("Rainfall by city in mm", ("Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Delhi")),
    "months": ("Monthly visitors in thousands", ("Jan", "Feb", "Mar", "Apr", "May", "Jun")),
    "products": ("Units sold by product", ("Laptops", "Phones", "Tablets", "Cameras", "Watches")),
    "sports": (
        "Favourite sport survey",
        ("Soccer", "Tennis", "Golf", "Hockey", "Rugby", "Cricket"),
    ),
    "pets": ("Pets owned by students", ("Dogs", "Cats", "Fish", "Birds", "Rabbits")),
    "energy": ("Energy mix of a region", ("Solar", "Wind", "Hydro", "Gas", "Nuclear")),
}

PALETTES = (
    ((66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188), (255, 112, 67)),
    ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)),
    ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)),
)


@dataclass(frozen=True)
class Chart:
    kind: str  # "bar" or "pie"
    domain: str
    title: str
    labels: tuple[str, ...]
    values: tuple[int, ...]  # bar: raw values; pie: percentages summing to 100
    palette: int
    horizontal: bool = False

    def signature(self) -> tuple:
        return (self.kind, self.domain, self.labels, self.values)

    @property
    def unit(self) -> str:
        return "%" if self.kind == "pie" else ""


def random_chart(rng: np.random.Generator, *, avoid_domain: str | None = None) -> Chart:
    domains = [d for d in DOMAINS if d != avoid_domain]
    domain = domains[int(rng.integers(len(domains)))]
    title, pool = DOMAINS[domain]
    kind = "pie" if rng.random() < 0.35 else "bar"
    n = int(rng.integers(3, 6 if kind == "pie" else min(7, len(pool) + 1)))
    labels = tuple(pool[int(i)] for i in sorted(rng.permutation(len(pool))[:n]))
    while True:
        if kind == "pie":
            cuts = np.sort(rng.choice(np.arange(1, 20), size=n - 1, replace=False)) * 5
            values = tuple(int(v) for v in np.diff(np.concatenate([[0], cuts, [100]])))
        else:
            values = tuple(int(v) for v in rng.integers(5, 96, size=n))
        # unique max and min so "which is highest/lowest" has one answer
        if values.count(max(values)) == 1 and values.count(min(values)) == 1:
            break
    return Chart(
        kind=kind,
        domain=domain,
        title=title,
        labels=labels,
        values=values,
        palette=int(rng.integers(len(PALETTES))),
        horizontal=kind == "bar" and rng.random() < 0.3,
    )


def random_chart_size(rng: np.random.Generator) -> tuple[int, int]:
    w = int(rng.integers(448, 641))
    h = int(rng.integers(max(320, int(w * 0.62)), min(560, w) + 1))
    return w, h


def render_chart(
    chart: Chart, size: tuple[int, int], rng: np.random.Generator, noise: float = 4.0
) -> Image.Image:
    w, h = size
    if rng.random() < 0.25:  # dark theme
        bg = tuple(int(v) for v in rng.integers(24, 56, size=3))
        ink, grid = (232, 232, 238), (84, 84, 96)
    else:
        bg = tuple(int(v) for v in rng.integers(200, 244, size=3))
        ink, grid = (30, 30, 36), (170, 170, 180)
    img = add_field(Image.new("RGB", size, bg), rng, 30.0)  # type: ignore[arg-type]
    draw = ImageDraw.Draw(img)
    palette = PALETTES[chart.palette]
    fs = max(12, w // 34)
    draw_text_centered(draw, (w / 2, 0.07 * h), chart.title, fs + 4, ink)
    if chart.kind == "bar":
        _bars(draw, chart, w, h, fs, ink, grid, palette, rng)
    else:
        _pie(draw, chart, w, h, fs, ink, bg, palette, rng)
    return add_noise(img, rng, noise)


def _bars(draw, chart: Chart, w, h, fs, ink, grid, palette, rng) -> None:
    n = len(chart.labels)
    top = max(chart.values)
    scale_max = int(math.ceil(top / 20.0) * 20)
    x0, x1, y0, y1 = 0.14 * w, 0.94 * w, 0.16 * h, 0.84 * h
    fill = float(rng.uniform(0.22, 0.42))  # half bar width, as a fraction of its band
    single = rng.random() < 0.3  # one colour for every bar
    for k in range(0, scale_max + 1, 20):
        frac = k / scale_max
        if chart.horizontal:
            x = x0 + frac * (x1 - x0)
            draw.line((x, y0, x, y1), fill=grid, width=1)
            draw_text_centered(draw, (x, y1 + 0.04 * h), str(k), fs - 2, ink)
        else:
            y = y1 - frac * (y1 - y0)
            draw.line((x0, y, x1, y), fill=grid, width=1)
            draw_text_centered(draw, (x0 - 0.05 * w, y), str(k), fs - 2, ink)
    draw.line((x0, y0, x0, y1), fill=ink, width=2)
    draw.line((x0, y1, x1, y1), fill=ink, width=2)
    for i, (label, value) in enumerate(zip(chart.labels, chart.values, strict=True)):
        color = palette[0 if single else i % len(palette)]
        if chart.horizontal:
            band = (y1 - y0) / n
            cy = y0 + band * (i + 0.5)
            bx = x0 + value / scale_max * (x1 - x0)
            draw.rectangle(
                (x0 + 1, cy - band * fill, bx, cy + band * fill), fill=color, outline=ink
            )
            draw.text((bx + 6, cy), str(value), font=font(fs), fill=ink, anchor="lm")
            draw.text((x0 - 6, cy), label, font=font(fs - 1), fill=ink, anchor="rm")
        else:
            band = (x1 - x0) / n
            cx = x0 + band * (i + 0.5)
            by = y1 - value / scale_max * (y1 - y0)
            draw.rectangle(
                (cx - band * fill, by, cx + band * fill, y1 - 1), fill=color, outline=ink
            )
            draw_text_centered(draw, (cx, by - fs * 0.8), str(value), fs, ink)
            draw_text_centered(draw, (cx, y1 + 0.05 * h), label, fs - 1, ink)


def _pie(draw, chart: Chart, w, h, fs, ink, bg, palette, rng) -> None:
    r = min(float(rng.uniform(0.27, 0.37)) * h, 0.26 * w)
    left = rng.random() < 0.5
    cx, cy = (0.3 if left else 0.7) * w, float(rng.uniform(0.52, 0.6)) * h
    start = float(rng.uniform(-180.0, 180.0))
    donut = rng.random() < 0.35
    label_r = 0.72 if donut else 0.62
    for i, value in enumerate(chart.values):
        end = start + 3.6 * value
        color = palette[i % len(palette)]
        draw.pieslice(
            (cx - r, cy - r, cx + r, cy + r), start, end, fill=color, outline=ink, width=2
        )
        start = end
    if donut:
        hole = 0.42 * r
        draw.ellipse((cx - hole, cy - hole, cx + hole, cy + hole), fill=bg, outline=ink, width=2)
    angle = start
    for value in chart.values:
        mid = math.radians(angle + 1.8 * value)
        text_ink = (20, 20, 24)
        draw_text_centered(
            draw,
            (cx + label_r * r * math.cos(mid), cy + label_r * r * math.sin(mid)),
            f"{value}%",
            fs,
            text_ink,
        )
        angle += 3.6 * value
    lx, ly = (0.62 if left else 0.06) * w, float(rng.uniform(0.22, 0.34)) * h
    step = min(0.12 * h, (0.84 * h - ly) / len(chart.labels))
    for i, (label, value) in enumerate(zip(chart.labels, chart.values, strict=True)):
        y = ly + i * step
        draw.rectangle(
            (lx, y - fs / 2, lx + fs, y + fs / 2), fill=palette[i % len(palette)], outline=ink
        )
        draw.text((lx + fs * 1.6, y), f"{label} {value}%", font=font(fs), fill=ink, anchor="lm")


# --------------------------------------------------------------------------- text


def caption(chart: Chart, rng: np.random.Generator) -> str:
    unit = chart.unit
    items = [
        f"{label} at {value}{unit}" for label, value in zip(chart.labels, chart.values, strict=True)
    ]
    body = join_phrases(items)
    kind = (
        "pie chart"
        if chart.kind == "pie"
        else ("horizontal bar chart" if chart.horizontal else "bar chart")
    )
    template = int(rng.integers(3))
    if template == 0:
        return f"A {kind} titled {chart.title} showing {body}."
    if template == 1:
        count = NUMBERS[len(items)] if len(items) < 5 else str(len(items))
        return f"This {kind}, titled {chart.title}, compares {count} categories: {body}."
    return f"{chart.title}: a {kind} with {body}."


def qa_pairs(
    chart: Chart, rng: np.random.Generator, *, short: bool = False
) -> list[tuple[str, str]]:
    unit = chart.unit
    pairs: list[tuple[str, str]] = []
    values = dict(zip(chart.labels, chart.values, strict=True))
    hi = max(values, key=values.__getitem__)
    lo = min(values, key=values.__getitem__)
    noun = "slice" if chart.kind == "pie" else "bar"
    for label, value in values.items():
        if chart.kind == "pie":
            q = f"What percentage does {label} account for?"
        else:
            q = f"What is the value for {label}?"
        pairs.append((q, f"{value}{unit}" if short else f"{label} is at {value}{unit}."))
    pairs.append(
        (
            f"Which category has the largest {noun}?",
            hi if short else f"{hi} has the largest {noun}, at {values[hi]}{unit}.",
        )
    )
    pairs.append(
        (
            f"Which category has the smallest {noun}?",
            lo if short else f"{lo} has the smallest {noun}, at {values[lo]}{unit}.",
        )
    )
    pairs.append(
        (
            f"How many {noun}s does the chart have?",
            str(len(values)) if short else f"The chart has {len(values)} {noun}s.",
        )
    )
    pairs.append(
        (
            "What is the title of the chart?",
            chart.title if short else f"The chart is titled {chart.title}.",
        )
    )
    a, b = (chart.labels[int(i)] for i in rng.permutation(len(chart.labels))[:2])
    diff = abs(values[a] - values[b])
    pairs.append(
        (
            f"What is the difference between {a} and {b}?",
            f"{diff}{unit}" if short else f"The difference is {diff}{unit}.",
        )
    )
    if chart.kind == "bar":
        total = sum(values.values())
        pairs.append(
            (
                "What is the sum of all values?",
                str(total) if short else f"The values add up to {total}.",
            )
        )
    if not short:
        pairs.append(("Describe this chart.", caption(chart, rng)))
    order = rng.permutation(len(pairs))
    return [pairs[int(i)] for i in order]
