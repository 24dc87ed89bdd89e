"""Synthetic scenes: coloured shapes at named positions on textured backgrounds.

A :class:`Scene` is the ground truth of what an image shows; captions and Q&A are written from it,
so they truly describe the pixels (a tiny CLIP trained on the demo learns a real signal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from fineharbor.demo.images import add_field, add_noise

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross")
PLURAL = {"cross": "crosses"}

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (222, 38, 38),
    "green": (30, 165, 60),
    "blue": (35, 85, 235),
    "yellow": (248, 212, 28),
    "purple": (140, 55, 195),
    "orange": (248, 132, 20),
    "pink": (242, 100, 182),
    "brown": (122, 72, 30),
    "black": (22, 22, 22),
    "white": (250, 250, 250),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "light gray": (206, 206, 206),
    "beige": (232, 216, 178),
    "pale blue": (188, 214, 242),
    "light green": (196, 232, 188),
    "dark blue": (28, 38, 92),
    "dark gray": (62, 62, 68),
    "pale pink": (246, 212, 222),
    "dark green": (24, 72, 44),
}

TEXTURES = ("plain", "gradient", "striped", "dotted", "checkered")

POSITIONS = ("left", "right", "top", "bottom", "center")
# Region centres as fractions of width/height; every region stays inside a 12% margin so a crop
# removing up to ~10% of a side never cuts a shape.
REGION_CENTER = {
    "left": (0.235, 0.5),
    "right": (0.765, 0.5),
    "top": (0.5, 0.235),
    "bottom": (0.5, 0.765),
    "center": (0.5, 0.5),
}
CELL = 0.23
NUMBERS = ("zero", "one", "two", "three", "four")


@dataclass(frozen=True)
class Group:
    count: int
    shape: str
    color: str
    position: str


@dataclass(frozen=True)
class Scene:
    groups: tuple[Group, ...]
    background: str
    texture: str
    banner: bool = False  # a very wide strip (extreme aspect); positions are left/center/right

    def flipped(self) -> Scene:
        swap = {"left": "right", "right": "left"}
        return replace(
            self,
            groups=tuple(
                replace(g, position=swap.get(g.position, g.position)) for g in self.groups
            ),
        )

    def signature(self) -> tuple:
        return (
            tuple(sorted((g.count, g.shape, g.color, g.position) for g in self.groups)),
            self.background,
            self.texture,
        )

    @property
    def shapes(self) -> set[str]:
        return {g.shape for g in self.groups}


def _contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return math.dist(a, b)


def random_scene(
    rng: np.random.Generator,
    *,
    banner: bool = False,
    avoid_shapes: set[str] | frozenset[str] = frozenset(),
    avoid_background: str | None = None,
    max_groups: int = 3,
) -> Scene:
    backgrounds = [b for b in BACKGROUNDS if b != avoid_background]
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    positions = ("left", "center", "right") if banner else POSITIONS
    n_groups = int(rng.integers(1, min(max_groups, len(positions)) + 1))
    shapes = [s for s in SHAPES if s not in avoid_shapes]
    chosen_shapes = rng.permutation(len(shapes))[:n_groups]
    chosen_positions = rng.permutation(len(positions))[:n_groups]
    colors = [c for c in COLORS if _contrast(COLORS[c], BACKGROUNDS[background]) >= 150]
    groups = []
    for shape_i, pos_i in zip(chosen_shapes, chosen_positions, strict=True):
        groups.append(
            Group(
                count=int(rng.integers(1, 5)),
                shape=shapes[int(shape_i)],
                color=colors[int(rng.integers(len(colors)))],
                position=positions[int(pos_i)],
            )
        )
    groups.sort(key=lambda g: POSITIONS.index(g.position))
    return Scene(groups=tuple(groups), background=background, texture=texture, banner=banner)


# --------------------------------------------------------------------------- rendering


def _shade(rgb: tuple[int, int, int], delta: int) -> tuple[int, int, int]:
    """Lighter on dark colours, darker on light ones."""
    sign = 1 if sum(rgb) < 380 else -1
    return tuple(int(np.clip(c + sign * delta, 0, 255)) for c in rgb)  # type: ignore[return-value]


def _background(scene: Scene, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    w, h = size
    base = BACKGROUNDS[scene.background]
    accent = _shade(base, 26)
    if scene.texture == "gradient":
        direction = int(rng.integers(3))
        xs = np.linspace(0.0, 1.0, w)[None, :]
        ys = np.linspace(0.0, 1.0, h)[:, None]
        t = [xs + 0 * ys, ys + 0 * xs, (xs + ys) / 2][direction]
        lo, hi = np.array(base, float), np.array(_shade(base, 55), float)
        arr = lo[None, None, :] * (1 - t[..., None]) + hi[None, None, :] * t[..., None]
        return Image.fromarray(arr.astype(np.uint8), "RGB")
    img = Image.new("RGB", size, base)
    draw = ImageDraw.Draw(img)
    step = max(10, min(w, h) // int(rng.integers(8, 15)))
    if scene.texture == "striped":
        vertical = bool(rng.integers(2))
        for k in range(0, (w if vertical else h), 2 * step):
            box = (k, 0, k + step - 1, h) if vertical else (0, k, w, k + step - 1)
            draw.rectangle(box, fill=accent)
    elif scene.texture == "dotted":
        r = max(2, step // 6)
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=accent)
    elif scene.texture == "checkered":
        for yi, y in enumerate(range(0, h, step)):
            for xi, x in enumerate(range(0, w, step)):
                if (xi + yi) % 2:
                    draw.rectangle((x, y, x + step - 1, y + step - 1), fill=accent)
    return img


def _polygon(cx: float, cy: float, r: float, n: int, rot: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n))
        for k in range(n)
    ]


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, d: float, fill, outline
) -> None:
    r = d / 2
    width = max(1, round(d / 22))
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
    elif shape == "square":
        s = r * 0.86
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill, outline=outline, width=width)
    elif shape == "triangle":
        pts = _polygon(cx, cy + r * 0.15, r * 1.05, 3, -math.pi / 2)
        draw.polygon(pts, fill=fill, outline=outline, width=width)
    elif shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.42
            a = -math.pi / 2 + math.pi * k / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        draw.polygon(pts, fill=fill, outline=outline, width=width)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, 0.0), fill=fill, outline=outline, width=width)
    elif shape == "diamond":
        pts = [(cx, cy - r), (cx + r * 0.72, cy), (cx, cy + r), (cx - r * 0.72, cy)]
        draw.polygon(pts, fill=fill, outline=outline, width=width)
    elif shape == "cross":
        t = r * 0.36
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    else:  # pragma: no cover - programming error
        raise ValueError(shape)


_LAYOUT = {
    1: [(0.0, 0.0)],
    2: [(-0.25, 0.0), (0.25, 0.0)],
    3: [(-0.25, -0.22), (0.25, -0.22), (0.0, 0.25)],
    4: [(-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25)],
}


def render_scene(
    scene: Scene, size: tuple[int, int], rng: np.random.Generator, noise: float = 10.0
) -> Image.Image:
    w, h = size
    img = add_field(_background(scene, size, rng), rng, 40.0)
    draw = ImageDraw.Draw(img)
    cw, ch = CELL * w, CELL * h
    if scene.banner:
        ch = 0.76 * h
    m = min(cw, ch)
    for g in scene.groups:
        fx, fy = REGION_CENTER[g.position]
        gx, gy = fx * w, fy * h
        layout = _LAYOUT[g.count]
        d = m * (0.85 if g.count == 1 else 0.42)
        if g.count == 2 and cw < ch:
            layout = [(0.0, -0.25), (0.0, 0.25)]
        fill = COLORS[g.color]
        outline = _shade(fill, 70)
        for ox, oy in layout:
            jx, jy = rng.uniform(-0.03, 0.03, size=2)
            draw_shape(draw, g.shape, gx + (ox + jx) * m, gy + (oy + jy) * m, d, fill, outline)
    return add_noise(img, rng, noise)


def random_size(rng: np.random.Generator, low: int = 256, high: int = 576) -> tuple[int, int]:
    while True:
        w, h = (int(v) for v in rng.integers(low, high + 1, size=2))
        if max(w, h) / min(w, h) <= 1.6:
            return w, h


# --------------------------------------------------------------------------- English text


def plural(shape: str, count: int) -> str:
    return shape if count == 1 else PLURAL.get(shape, shape + "s")


def _count_word(g: Group, rng: np.random.Generator) -> str:
    if g.count == 1:
        if rng.random() < 0.5:
            return "one"
        return "an" if g.color[0] in "aeiou" else "a"
    return NUMBERS[g.count]


_POSITION_PHRASES = {
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "center": ("in the center", "in the middle"),
}


def position_phrase(position: str, rng: np.random.Generator) -> str:
    options = _POSITION_PHRASES[position]
    return options[int(rng.integers(len(options)))]


def group_phrase(g: Group, rng: np.random.Generator) -> str:
    where = position_phrase(g.position, rng)
    return f"{_count_word(g, rng)} {g.color} {plural(g.shape, g.count)} {where}"


def join_phrases(parts: list[str], conj: str = "and") -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + f" {conj} " + parts[-1]


def background_phrase(scene: Scene, rng: np.random.Generator) -> str:
    bg = scene.background
    if scene.texture == "plain":
        options = (f"plain {bg}", f"{bg} textured", f"{bg} grainy")
    elif scene.texture == "dotted":
        options = (f"{bg} dotted", f"{bg} polka-dot")
    else:
        options = (f"{bg} {scene.texture}",)
    return options[int(rng.integers(len(options)))]


_PREFIXES = (
    "An illustration of",
    "A simple drawing of",
    "A picture showing",
    "A flat graphic with",
    "A synthetic image of",
    "Digital art showing",
    "A clean vector-style picture of",
)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """An English caption of 8–40 words that truly describes the scene."""
    groups = [group_phrase(g, rng) for g in scene.groups]
    order = rng.permutation(len(groups))
    body = join_phrases([groups[int(i)] for i in order])
    bg = background_phrase(scene, rng)
    shape = "wide banner" if scene.banner else "background"
    template = int(rng.integers(4))
    if template == 0:
        prefix = _PREFIXES[int(rng.integers(len(_PREFIXES)))]
        text = f"{prefix} {body} on a {bg} {shape}."
    elif template == 1:
        text = f"{body[0].upper()}{body[1:]}, drawn on a {bg} {shape}."
    elif template == 2:
        first = scene.groups[int(order[0])]
        verb = "is" if first.count == 1 else "are"
        text = f"There {verb} {body} on a {bg} {shape} in this picture."
    else:
        article = "An" if bg[0] in "aeiou" else "A"
        text = f"{article} {bg} {shape} with {body}."
    words = len(text.split())
    if words < 8:
        text = text[:-1] + ", nothing else is visible."
    return text


# --------------------------------------------------------------------------- Q&A


def _where_answer(g: Group, rng: np.random.Generator) -> str:
    phrase = position_phrase(g.position, rng)
    if rng.random() < 0.5:
        return phrase[0].upper() + phrase[1:] + "."
    pronoun = "It is" if g.count == 1 else "They are"
    return f"{pronoun} {phrase} of the image."


def qa_pairs(
    scene: Scene, rng: np.random.Generator, *, short: bool = False
) -> list[tuple[str, str]]:
    """Every true question/answer pair about the scene, shuffled (short: no long answers)."""
    pairs: list[tuple[str, str]] = []
    total = sum(g.count for g in scene.groups)
    for g in scene.groups:
        name = plural(g.shape, g.count)
        num = NUMBERS[g.count]
        if g.count == 1:
            where = g.position if short else _where_answer(g, rng)
            pairs.append((f"Where is the {g.color} {g.shape}?", where))
            color = g.color if short else f"The {g.shape} is {g.color}."
            pairs.append((f"What color is the {g.shape}?", color))
            q = f"What shape is {position_phrase(g.position, rng)}?"
            pairs.append((q, f"A {g.color} {g.shape}." if not short else g.shape))
        else:
            where = g.position if short else _where_answer(g, rng)
            pairs.append((f"Where are the {g.color} {name}?", where))
            color = g.color if short else f"The {name} are {g.color}."
            pairs.append((f"What color are the {name}?", color))
            q = f"What shapes are {position_phrase(g.position, rng)}?"
            pairs.append((q, f"{num.capitalize()} {g.color} {name}." if not short else name))
        answer = num if short else f"There {'is' if g.count == 1 else 'are'} {num} {name}."
        pairs.append((f"How many {plural(g.shape, 2)} are in the image?", answer))
    pairs.append(
        (
            "What color is the background?",
            scene.background if short else f"The background is {scene.background}.",
        )
    )
    pairs.append(
        (
            "How many shapes are there in total?",
            str(total) if short else f"There are {total} shapes in total.",
        )
    )
    present = {(g.shape, g.color) for g in scene.groups}
    g = scene.groups[int(rng.integers(len(scene.groups)))]
    pairs.append((f"Is there a {g.color} {g.shape} in the image?", "Yes." if not short else "yes"))
    for _ in range(20):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        if (shape, color) not in present:
            article = "an" if color[0] in "aeiou" else "a"
            pairs.append(
                (f"Is there {article} {color} {shape} in the image?", "No." if not short else "no")
            )
            break
    if not short:
        pairs.append(("Describe the image.", caption(scene, rng)))
    order = rng.permutation(len(pairs))
    return [pairs[int(i)] for i in order]


# --------------------------------------------------------------------------- other languages

# (singular, plural, gender) per language; gender drives the article for "one".
_FR_SHAPES = {
    "circle": ("cercle", "cercles", "m"),
    "square": ("carré", "carrés", "m"),
    "triangle": ("triangle", "triangles", "m"),
    "star": ("étoile", "étoiles", "f"),
    "hexagon": ("hexagone", "hexagones", "m"),
    "diamond": ("losange", "losanges", "m"),
    "cross": ("croix", "croix", "f"),
}
_FR_COLORS = {
    "red": "rouge",
    "green": "vert",
    "blue": "bleu",
    "yellow": "jaune",
    "purple": "violet",
    "orange": "orange",
    "pink": "rose",
    "brown": "marron",
    "black": "noir",
    "white": "blanc",
}
_FR_POS = {
    "left": "à gauche",
    "right": "à droite",
    "top": "en haut",
    "bottom": "en bas",
    "center": "au centre",
}
_FR_BG = {
    "light gray": "gris clair",
    "beige": "beige",
    "pale blue": "bleu pâle",
    "light green": "vert clair",
    "dark blue": "bleu foncé",
    "dark gray": "gris foncé",
    "pale pink": "rose pâle",
    "dark green": "vert foncé",
}
_FR_NUM = {2: "deux", 3: "trois", 4: "quatre"}

_DE_SHAPES = {
    "circle": ("Kreis", "Kreise", "m"),
    "square": ("Quadrat", "Quadrate", "n"),
    "triangle": ("Dreieck", "Dreiecke", "n"),
    "star": ("Stern", "Sterne", "m"),
    "hexagon": ("Sechseck", "Sechsecke", "n"),
    "diamond": ("Raute", "Rauten", "f"),
    "cross": ("Kreuz", "Kreuze", "n"),
}
_DE_COLORS = {
    "red": "Rot",
    "green": "Grün",
    "blue": "Blau",
    "yellow": "Gelb",
    "purple": "Lila",
    "orange": "Orange",
    "pink": "Rosa",
    "brown": "Braun",
    "black": "Schwarz",
    "white": "Weiß",
}
_DE_POS = {
    "left": "links",
    "right": "rechts",
    "top": "oben",
    "bottom": "unten",
    "center": "in der Mitte",
}
_DE_BG = {
    "light gray": "hellgrauen",
    "beige": "beigen",
    "pale blue": "hellblauen",
    "light green": "hellgrünen",
    "dark blue": "dunkelblauen",
    "dark gray": "dunkelgrauen",
    "pale pink": "zartrosa",
    "dark green": "dunkelgrünen",
}
_DE_NUM = {2: "zwei", 3: "drei", 4: "vier"}
_DE_ONE = {"m": "einen", "f": "eine", "n": "ein"}

_ES_SHAPES = {
    "circle": ("círculo", "círculos", "m"),
    "square": ("cuadrado", "cuadrados", "m"),
    "triangle": ("triángulo", "triángulos", "m"),
    "star": ("estrella", "estrellas", "f"),
    "hexagon": ("hexágono", "hexágonos", "m"),
    "diamond": ("rombo", "rombos", "m"),
    "cross": ("cruz", "cruces", "f"),
}
_ES_COLORS = {
    "red": "rojo",
    "green": "verde",
    "blue": "azul",
    "yellow": "amarillo",
    "purple": "morado",
    "orange": "naranja",
    "pink": "rosa",
    "brown": "marrón",
    "black": "negro",
    "white": "blanco",
}
_ES_POS = {
    "left": "a la izquierda",
    "right": "a la derecha",
    "top": "en la parte superior",
    "bottom": "en la parte inferior",
    "center": "en el centro",
}
_ES_BG = {
    "light gray": "gris claro",
    "beige": "beige",
    "pale blue": "azul pálido",
    "light green": "verde claro",
    "dark blue": "azul oscuro",
    "dark gray": "gris oscuro",
    "pale pink": "rosa pálido",
    "dark green": "verde oscuro",
}
_ES_NUM = {2: "dos", 3: "tres", 4: "cuatro"}

_ZH_SHAPES = {
    "circle": "圆形",
    "square": "正方形",
    "triangle": "三角形",
    "star": "星形",
    "hexagon": "六边形",
    "diamond": "菱形",
    "cross": "十字形",
}
_ZH_COLORS = {
    "red": "红色",
    "green": "绿色",
    "blue": "蓝色",
    "yellow": "黄色",
    "purple": "紫色",
    "orange": "橙色",
    "pink": "粉色",
    "brown": "棕色",
    "black": "黑色",
    "white": "白色",
}
_ZH_POS = {"left": "左边", "right": "右边", "top": "上方", "bottom": "下方", "center": "中间"}
_ZH_BG = {
    "light gray": "浅灰色",
    "beige": "米色",
    "pale blue": "淡蓝色",
    "light green": "浅绿色",
    "dark blue": "深蓝色",
    "dark gray": "深灰色",
    "pale pink": "淡粉色",
    "dark green": "深绿色",
}
_ZH_NUM = {1: "一", 2: "两", 3: "三", 4: "四"}

LANGUAGES = ("fr", "de", "es", "zh")
DESCRIBE_PROMPT = {
    "fr": "Décris cette image en une phrase.",
    "de": "Beschreibe dieses Bild in einem Satz.",
    "es": "Describe esta imagen en una frase.",
    "zh": "请用一句话描述这张图片。",
}


def foreign_caption(scene: Scene, lang: str) -> str:
    """A fluent caption of the scene in French, German, Spanish or Chinese."""
    bg_word = "bandeau" if scene.banner else "fond"
    if lang == "fr":
        parts = []
        for g in scene.groups:
            sing, plur, gender = _FR_SHAPES[g.shape]
            if g.count == 1:
                art = "une" if gender == "f" else "un"
                parts.append(f"{art} {sing} de couleur {_FR_COLORS[g.color]} {_FR_POS[g.position]}")
            else:
                parts.append(
                    f"{_FR_NUM[g.count]} {plur} de couleur "
                    f"{_FR_COLORS[g.color]} {_FR_POS[g.position]}"
                )
        body = join_phrases(parts, "et")
        return f"Une image simple montrant {body}, sur un {bg_word} {_FR_BG[scene.background]}."
    if lang == "de":
        parts = []
        for g in scene.groups:
            sing, plur, gender = _DE_SHAPES[g.shape]
            if g.count == 1:
                parts.append(
                    f"{_DE_ONE[gender]} {sing} in {_DE_COLORS[g.color]} {_DE_POS[g.position]}"
                )
            else:
                parts.append(
                    f"{_DE_NUM[g.count]} {plur} in {_DE_COLORS[g.color]} {_DE_POS[g.position]}"
                )
        bg = "Banner" if scene.banner else "Hintergrund"
        body = join_phrases(parts, "und")
        return f"Das Bild zeigt {body} auf einem {_DE_BG[scene.background]} {bg}."
    if lang == "es":
        parts = []
        for g in scene.groups:
            sing, plur, gender = _ES_SHAPES[g.shape]
            if g.count == 1:
                art = "una" if gender == "f" else "un"
                parts.append(f"{art} {sing} de color {_ES_COLORS[g.color]} {_ES_POS[g.position]}")
            else:
                parts.append(
                    f"{_ES_NUM[g.count]} {plur} de color "
                    f"{_ES_COLORS[g.color]} {_ES_POS[g.position]}"
                )
        bg = "una franja ancha" if scene.banner else "un fondo"
        body = join_phrases(parts, "y")
        return f"Una imagen sencilla con {body}, sobre {bg} de color {_ES_BG[scene.background]}."
    if lang == "zh":
        parts = [
            f"{_ZH_POS[g.position]}有{_ZH_NUM[g.count]}个{_ZH_COLORS[g.color]}的{_ZH_SHAPES[g.shape]}"
            for g in scene.groups
        ]
        return f"这张图片的{'，'.join(parts)}，背景是{_ZH_BG[scene.background]}的。"
    raise ValueError(lang)  # pragma: no cover
