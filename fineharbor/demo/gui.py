"""Synthetic GUI screenshots (desktop and phone) with widgets whose boxes are known, and agent
actions that truly point at them: pyautogui-style (normalised) and Android-in-the-wild style
(pixels)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from fineharbor.demo.images import add_field, font

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Widget:
    kind: str  # button, field, file, folder, menu, checkbox, icon, row, toggle, search, key
    label: str
    box: Box

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _sample(rng: np.random.Generator, seq, n: int) -> list:
    return [seq[int(i)] for i in rng.permutation(len(seq))[:n]]


def _vertical_gradient(size: tuple[int, int], top, bottom) -> Image.Image:
    w, h = size
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    arr = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    return Image.fromarray(np.repeat(arr, w, axis=1).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------- desktop

APP_TITLES = (
    "Document Editor",
    "File Manager",
    "Account Settings",
    "Mail Client",
    "Sign Up",
    "Project Planner",
)
TOOLBAR = (
    "New",
    "Open",
    "Save",
    "Print",
    "Export",
    "Share",
    "Search",
    "Delete",
    "Undo",
    "Settings",
    "Help",
    "Refresh",
)
FOOTER = (
    ("Cancel", "OK"),
    ("Back", "Next"),
    ("Close", "Apply"),
    ("Discard", "Submit"),
    ("Reset", "Save Changes"),
)
FOLDERS = ("Documents", "Downloads", "Pictures", "Music", "Desktop", "Projects", "Archive", "Trash")
FILES = (
    "report.txt",
    "budget.xlsx",
    "photo_01.png",
    "notes.md",
    "slides.pptx",
    "invoice.pdf",
    "draft_v2.docx",
    "data.csv",
    "logo.svg",
    "todo.txt",
    "backup.zip",
    "song.mp3",
)
FIELDS = ("Name", "Email", "Phone", "City", "Password", "Company", "Username", "Subject")
FIELD_VALUES = {
    "Name": ("John Smith", "Maria Garcia", "Wei Chen"),
    "Email": ("jane@example.com", "team@example.org", "info@example.net"),
    "Phone": ("555 0134", "555 0199", "555 0102"),
    "City": ("Berlin", "Toronto", "Nairobi"),
    "Password": ("hunter2!", "S3cure pass", "blue-river-42"),
    "Company": ("Acme Corp", "Globex", "Initech"),
    "Username": ("jsmith", "mgarcia", "wchen88"),
    "Subject": ("Quarterly report", "Meeting notes", "Hello team"),
}
CHECKBOXES = ("Remember me", "Send newsletter", "Dark mode", "Auto save", "Show hidden files")
THEMES = (
    # window, panel, accent, text, field
    ((246, 247, 250), (228, 232, 240), (52, 101, 214), (28, 30, 36), (255, 255, 255)),
    ((250, 248, 242), (236, 230, 216), (196, 84, 40), (40, 32, 24), (255, 253, 248)),
    ((40, 44, 52), (30, 33, 40), (97, 175, 239), (220, 223, 228), (55, 60, 70)),
    ((244, 250, 246), (222, 238, 228), (30, 140, 90), (20, 40, 30), (255, 255, 255)),
    ((248, 244, 252), (232, 224, 244), (128, 70, 200), (36, 26, 50), (255, 255, 255)),
)
DESKTOP_SIZES = ((960, 600), (1024, 640), (900, 600), (1000, 625), (840, 560))


def _button(draw, box: Box, label: str, fill, ink, size: int, radius: int = 6) -> None:
    draw.rounded_rectangle(box, radius=radius, fill=fill, outline=ink, width=1)
    draw.text(
        ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2),
        label,
        font=font(size),
        fill=ink,
        anchor="mm",
    )


def render_desktop(rng: np.random.Generator) -> tuple[Image.Image, list[Widget], str]:
    size = _pick(rng, DESKTOP_SIZES)
    w, h = size
    window, panel, accent, ink, field_bg = _pick(rng, THEMES)
    dark = sum(window) < 300
    btn_fill = tuple(min(255, c + 18) for c in panel) if dark else (255, 255, 255)
    top = tuple(int(v) for v in rng.integers(40, 200, size=3))
    bottom = tuple(int(v) for v in rng.integers(40, 200, size=3))
    img = _vertical_gradient(size, top, bottom)
    draw = ImageDraw.Draw(img)
    widgets: list[Widget] = []
    fs = 14
    img = add_field(img, rng, 45.0)
    draw = ImageDraw.Draw(img)
    ww = int(w * rng.uniform(0.72, 0.97))
    wh = int(h * rng.uniform(0.8, 0.97))
    wx0 = int(rng.integers(0, w - ww + 1))
    wy0 = int(rng.integers(0, h - wh + 1))
    wx1, wy1 = wx0 + ww - 1, wy0 + wh - 1
    shade = tuple(max(0, c - 36) if sum(window) > 300 else min(255, c + 36) for c in window)
    img.paste(_vertical_gradient((wx1 - wx0, wy1 - wy0), window, shade), (wx0, wy0))
    draw.rectangle((wx0, wy0, wx1, wy1), outline=(90, 90, 100))
    title = _pick(rng, APP_TITLES)
    draw.rectangle((wx0, wy0, wx1, wy0 + 30), fill=accent)
    draw.text((wx0 + 12, wy0 + 15), title, font=font(fs + 1), fill=(255, 255, 255), anchor="lm")
    for k, sym in enumerate(("x", "+", "-")):
        cx = wx1 - 18 - 26 * k
        draw.text((cx, wy0 + 15), sym, font=font(fs + 2), fill=(255, 255, 255), anchor="mm")
    # menu bar
    x = wx0 + 10
    y = wy0 + 30
    draw.rectangle((wx0, y, wx1, y + 24), fill=panel)
    for label in ("File", "Edit", "View", "Tools", "Help"):
        tw = int(draw.textlength(label, font=font(fs)))
        widgets.append(Widget("menu", label, (x - 4, y + 2, x + tw + 4, y + 22)))
        draw.text((x, y + 12), label, font=font(fs), fill=ink, anchor="lm")
        x += tw + 22
    # toolbar
    y += 30
    x = wx0 + 10
    for label in _sample(rng, TOOLBAR, int(rng.integers(4, 7))):
        tw = int(draw.textlength(label, font=font(fs)))
        box = (x, y, x + tw + 24, y + 28)
        _button(draw, box, label, btn_fill, ink, fs)
        widgets.append(Widget("button", label, box))
        x = box[2] + 8
    y += 38
    # sidebar with folders
    side_w = int(0.2 * (wx1 - wx0))
    draw.rectangle((wx0, y, wx0 + side_w, wy1), fill=panel)
    fy = y + 10
    for label in _sample(rng, FOLDERS, int(rng.integers(4, 7))):
        box = (wx0 + 6, fy, wx0 + side_w - 6, fy + 26)
        draw.rectangle((box[0] + 6, fy + 7, box[0] + 20, fy + 19), fill=(232, 180, 60), outline=ink)
        draw.text((box[0] + 28, fy + 13), label, font=font(fs), fill=ink, anchor="lm")
        widgets.append(Widget("folder", label, box))
        fy += 32
    # main pane: a form or a file list
    mx0, mx1 = wx0 + side_w + 20, wx1 - 20
    footer_y = wy1 - 48
    if rng.random() < 0.5:
        fy = y + 12
        for label in _sample(rng, FIELDS, int(rng.integers(2, 5))):
            draw.text((mx0, fy + 14), label, font=font(fs), fill=ink, anchor="lm")
            box = (mx0 + 110, fy, min(mx1, mx0 + 110 + int(0.45 * (mx1 - mx0))), fy + 28)
            draw.rectangle(box, fill=field_bg, outline=(140, 140, 150))
            widgets.append(Widget("field", label, box))
            fy += 42
        for label in _sample(rng, CHECKBOXES, int(rng.integers(1, 3))):
            if fy + 24 > footer_y - 8:
                break
            box = (mx0, fy + 4, mx0 + 18, fy + 22)
            draw.rectangle(box, fill=field_bg, outline=ink)
            draw.text((mx0 + 28, fy + 13), label, font=font(fs), fill=ink, anchor="lm")
            widgets.append(
                Widget(
                    "checkbox",
                    label,
                    (
                        box[0],
                        box[1],
                        box[2] + 28 + int(draw.textlength(label, font=font(fs))),
                        box[3],
                    ),
                )
            )
            fy += 34
    else:
        fy = y + 10
        draw.text((mx0, fy + 8), "Name", font=font(fs - 1), fill=ink, anchor="lm")
        draw.text((mx1 - 120, fy + 8), "Size", font=font(fs - 1), fill=ink, anchor="lm")
        draw.line((mx0, fy + 20, mx1, fy + 20), fill=(150, 150, 160))
        fy += 26
        for k, label in enumerate(_sample(rng, FILES, int(rng.integers(4, 8)))):
            if fy + 26 > footer_y - 8:
                break
            box = (mx0, fy, mx1, fy + 26)
            if k % 2:
                draw.rectangle(box, fill=panel)
            draw.rectangle((mx0 + 6, fy + 5, mx0 + 20, fy + 21), fill=(255, 255, 255), outline=ink)
            draw.text((mx0 + 30, fy + 13), label, font=font(fs), fill=ink, anchor="lm")
            draw.text(
                (mx1 - 120, fy + 13),
                f"{int(rng.integers(2, 900))} KB",
                font=font(fs),
                fill=ink,
                anchor="lm",
            )
            widgets.append(Widget("file", label, box))
            fy += 28
    # footer buttons
    left, right = _pick(rng, FOOTER)
    for k, label in enumerate((right, left)):
        tw = int(draw.textlength(label, font=font(fs)))
        x1 = mx1 - k * 130
        box = (x1 - max(90, tw + 24), footer_y, x1, footer_y + 32)
        _button(
            draw, box, label, accent if k == 0 else btn_fill, (255, 255, 255) if k == 0 else ink, fs
        )
        widgets.append(Widget("button", label, box))
    return add_field(img, rng, 24.0), widgets, title


def _norm(v: float, side: int) -> str:
    return f"{v / side:.4f}"


def desktop_step(
    rng: np.random.Generator, widgets: list[Widget], size: tuple[int, int]
) -> tuple[str, str]:
    """(instruction, pyautogui action) that truly refers to a widget on the screen."""
    w, h = size
    by_kind: dict[str, list[Widget]] = {}
    for wd in widgets:
        by_kind.setdefault(wd.kind, []).append(wd)

    def at(wd: Widget) -> str:
        cx, cy = wd.center
        return f"x={_norm(cx, w)}, y={_norm(cy, h)}"

    choices = ["click_button", "click_menu", "hover", "scroll", "hotkey", "press", "click_folder"]
    if "file" in by_kind:
        choices += ["double_click", "right_click", "drag"]
    if "field" in by_kind:
        choices += ["write", "click_field"]
    if "checkbox" in by_kind:
        choices += ["checkbox"]
    kind = _pick(rng, choices)
    if kind == "click_button":
        wd = _pick(rng, by_kind["button"])
        text = _pick(rng, ("Click the {} button", "Press the {} button", "Click on {}"))
        return text.format(wd.label), f"pyautogui.click({at(wd)})"
    if kind == "click_menu":
        wd = _pick(rng, by_kind["menu"])
        return f"Open the {wd.label} menu", f"pyautogui.click({at(wd)})"
    if kind == "click_folder":
        wd = _pick(rng, by_kind["folder"])
        return f"Open the {wd.label} folder in the sidebar", f"pyautogui.click({at(wd)})"
    if kind == "hover":
        wd = _pick(rng, by_kind["button"])
        return f"Hover the mouse over the {wd.label} button", f"pyautogui.moveTo({at(wd)})"
    if kind == "double_click":
        wd = _pick(rng, by_kind["file"])
        return f"Double-click {wd.label} to open it", f"pyautogui.doubleClick({at(wd)})"
    if kind == "right_click":
        wd = _pick(rng, by_kind["file"])
        return f"Right-click {wd.label} to show its context menu", f"pyautogui.rightClick({at(wd)})"
    if kind == "drag":
        f = _pick(rng, by_kind["file"])
        d = _pick(rng, by_kind["folder"])
        return f"Drag {f.label} into the {d.label} folder", f"pyautogui.dragTo({at(d)})"
    if kind == "write":
        wd = _pick(rng, by_kind["field"])
        value = _pick(rng, FIELD_VALUES[wd.label])
        return f"Type {value} into the {wd.label} field", f"pyautogui.write(message='{value}')"
    if kind == "click_field":
        wd = _pick(rng, by_kind["field"])
        return f"Click the {wd.label} text field", f"pyautogui.click({at(wd)})"
    if kind == "checkbox":
        wd = _pick(rng, by_kind["checkbox"])
        return f"Tick the {wd.label} checkbox", f"pyautogui.click({at(wd)})"
    if kind == "scroll":
        if rng.random() < 0.5:
            return "Scroll down to see more content", "pyautogui.scroll(-5)"
        return "Scroll back up to the top of the window", "pyautogui.scroll(5)"
    if kind == "hotkey":
        return _pick(
            rng,
            (
                (
                    "Save the current document with the keyboard shortcut",
                    "pyautogui.hotkey('ctrl', 's')",
                ),
                ("Copy the selected text", "pyautogui.hotkey('ctrl', 'c')"),
                ("Undo the last change", "pyautogui.hotkey('ctrl', 'z')"),
                ("Select everything in the window", "pyautogui.hotkey('ctrl', 'a')"),
            ),
        )
    return _pick(
        rng,
        (
            ("Press Enter to confirm", "pyautogui.press('enter')"),
            ("Press Escape to close the open menu", "pyautogui.press('esc')"),
            ("Press Tab to move to the next field", "pyautogui.press('tab')"),
        ),
    )


BAD_PYAUTOGUI = (
    "pyautogui.teleport(x=1)",
    "pyautogui.click(x=0.41, y=",
    "click somewhere near the top",
    "pyautogui.click(x=left, y=top)",
    "pyautogui.fly(to='Save')",
    "{{action: click}}",
)


# --------------------------------------------------------------------------- phone

PHONE_SIZES = ((540, 960), (576, 1024), (540, 1080), (600, 1000))
APPS = (
    "Settings",
    "Chrome",
    "Gmail",
    "Maps",
    "Camera",
    "Photos",
    "Clock",
    "Calendar",
    "Contacts",
    "Messages",
    "Music",
    "Weather",
    "Notes",
    "Files",
    "Shop",
    "News",
)
SETTINGS = (
    "Wi-Fi",
    "Bluetooth",
    "Display",
    "Battery",
    "Sound",
    "Storage",
    "Notifications",
    "Location",
    "Privacy",
    "Dark theme",
)
CONTACTS = (
    "Alice Brown",
    "Ben Carter",
    "Chloe Davis",
    "Daniel Evans",
    "Emma Fischer",
    "Farid Ghani",
    "Grace Hill",
    "Hugo Ito",
    "Ines Jones",
    "Jonas Klein",
)
QUERIES = (
    "pizza near me",
    "weather tomorrow",
    "train to Lyon",
    "red running shoes",
    "cheap flights",
    "pasta recipe",
)
PHONE_THEMES = (
    ((250, 250, 252), (26, 115, 232), (32, 33, 36)),
    ((255, 251, 245), (214, 90, 49), (45, 35, 30)),
    ((32, 33, 36), (138, 180, 248), (232, 234, 237)),
    ((245, 252, 248), (24, 128, 56), (25, 40, 30)),
    ((250, 246, 255), (120, 80, 200), (40, 30, 56)),
)


@dataclass
class PhoneScreen:
    image: Image.Image
    widgets: list[Widget]

    def find(self, label: str) -> Widget:
        for wd in self.widgets:
            if wd.label == label:
                return wd
        raise KeyError(label)


class Phone:
    """Draws screens of one episode with a shared size, theme and wallpaper."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.size = _pick(rng, PHONE_SIZES)
        self.bg, self.accent, self.ink = _pick(rng, PHONE_THEMES)
        self.wall_top = tuple(int(v) for v in rng.integers(30, 220, size=3))
        self.wall_bottom = tuple(int(v) for v in rng.integers(30, 220, size=3))
        self.fs = self.size[0] // 24
        self.bg_shade = tuple(
            max(0, c - 40) if sum(self.bg) > 300 else min(255, c + 40) for c in self.bg
        )

    def _base(self, wallpaper: bool = False) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        w, _ = self.size
        if wallpaper:
            img = _vertical_gradient(self.size, self.wall_top, self.wall_bottom)
        else:
            img = _vertical_gradient(self.size, self.bg, self.bg_shade)
        draw = ImageDraw.Draw(img)
        bar = (0, 0, 0) if wallpaper else self.accent
        draw.rectangle((0, 0, w, 36), fill=bar)
        hour = int(self.rng.integers(7, 23))
        minute = int(self.rng.integers(0, 60))
        draw.text(
            (16, 18),
            f"{hour}:{minute:02d}",
            font=font(self.fs - 2),
            fill=(255, 255, 255),
            anchor="lm",
        )
        draw.text(
            (w - 16, 18),
            f"{int(self.rng.integers(20, 100))}%",
            font=font(self.fs - 2),
            fill=(255, 255, 255),
            anchor="rm",
        )
        return img, draw

    def _app_bar(self, draw: ImageDraw.ImageDraw, title: str) -> None:
        w, _ = self.size
        draw.rectangle((0, 36, w, 112), fill=self.accent)
        draw.text((24, 74), "<", font=font(self.fs + 6), fill=(255, 255, 255), anchor="lm")
        draw.text((70, 74), title, font=font(self.fs + 4), fill=(255, 255, 255), anchor="lm")

    def _nav(self, draw: ImageDraw.ImageDraw) -> None:
        w, h = self.size
        draw.rectangle((0, h - 56, w, h), fill=(20, 20, 22))
        for k, sym in enumerate(("<", "O", "=")):
            draw.text(
                (w * (k + 1) / 4, h - 28),
                sym,
                font=font(self.fs + 4),
                fill=(230, 230, 230),
                anchor="mm",
            )

    def home(self, apps: list[str], menu_for: str | None = None) -> PhoneScreen:
        w, h = self.size
        img, draw = self._base(wallpaper=True)
        widgets = []
        cols = 4
        cell = w / cols
        y0 = 150
        for i, app in enumerate(apps):
            r, c = divmod(i, cols)
            cx, cy = cell * (c + 0.5), y0 + r * cell * 1.25
            s = cell * 0.3
            color = tuple(int(v) for v in self.rng.integers(40, 230, size=3))
            draw.rounded_rectangle(
                (cx - s, cy - s, cx + s, cy + s),
                radius=int(s / 2.5),
                fill=color,
                outline=(255, 255, 255),
                width=2,
            )
            draw.text((cx, cy), app[0], font=font(int(s)), fill=(255, 255, 255), anchor="mm")
            draw.text(
                (cx, cy + s + 16), app, font=font(self.fs - 3), fill=(255, 255, 255), anchor="mm"
            )
            widgets.append(
                Widget("icon", app, (int(cx - s), int(cy - s), int(cx + s), int(cy + s + 26)))
            )
        search = (24, h - 150, w - 24, h - 96)
        draw.rounded_rectangle(search, radius=26, fill=(255, 255, 255))
        draw.text(
            (56, (search[1] + search[3]) / 2),
            "Search",
            font=font(self.fs),
            fill=(110, 110, 110),
            anchor="lm",
        )
        widgets.append(Widget("search", "Search", search))
        if menu_for is not None:
            anchor = next(wd for wd in widgets if wd.label == menu_for)
            mx0, my0 = min(anchor.box[0], w - 220), anchor.box[3] + 6
            draw.rounded_rectangle(
                (mx0, my0, mx0 + 200, my0 + 132),
                radius=10,
                fill=(250, 250, 250),
                outline=(80, 80, 80),
            )
            for k, label in enumerate(("App info", "Remove", "Widgets")):
                box = (mx0, my0 + 4 + 42 * k, mx0 + 200, my0 + 44 + 42 * k)
                draw.text(
                    (mx0 + 18, (box[1] + box[3]) / 2),
                    label,
                    font=font(self.fs),
                    fill=(30, 30, 30),
                    anchor="lm",
                )
                widgets.append(Widget("menu", label, box))
        self._nav(draw)
        return PhoneScreen(add_field(img, self.rng, 30.0), widgets)

    def listing(
        self,
        title: str,
        rows: list[str],
        *,
        toggles: bool = False,
        search: str | None = None,
        keyboard: bool = False,
    ) -> PhoneScreen:
        w, h = self.size
        img, draw = self._base()
        self._app_bar(draw, title)
        widgets = []
        y = 124
        if search is not None:
            box = (20, y, w - 20, y + 52)
            draw.rounded_rectangle(
                box,
                radius=24,
                fill=tuple(max(0, c - 14) for c in self.bg) if sum(self.bg) > 300 else (60, 62, 66),
                outline=self.accent,
                width=2,
            )
            draw.text(
                (48, y + 26), search or "Search", font=font(self.fs), fill=self.ink, anchor="lm"
            )
            widgets.append(Widget("search", "Search", box))
            y += 68
        row_h = 78
        bottom = h - (330 if keyboard else 56)
        for label in rows:
            if y + row_h > bottom:
                break
            box = (0, y, w, y + row_h)
            draw.line((20, y + row_h, w - 20, y + row_h), fill=(170, 170, 176))
            draw.ellipse((24, y + 19, 64, y + 59), fill=self.accent)
            draw.text(
                (84, y + row_h / 2), label, font=font(self.fs + 1), fill=self.ink, anchor="lm"
            )
            widgets.append(Widget("row", label, box))
            if toggles:
                on = bool(self.rng.integers(2))
                tb = (w - 96, y + 24, w - 36, y + 54)
                draw.rounded_rectangle(tb, radius=15, fill=self.accent if on else (160, 160, 160))
                kx = tb[2] - 15 if on else tb[0] + 15
                draw.ellipse((kx - 12, y + 27, kx + 12, y + 51), fill=(255, 255, 255))
                widgets.append(Widget("toggle", f"{label} switch", tb))
            y += row_h
        if keyboard:
            self._keyboard(draw, widgets)
        self._nav(draw)
        return PhoneScreen(add_field(img, self.rng, 30.0), widgets)

    def _keyboard(self, draw: ImageDraw.ImageDraw, widgets: list[Widget]) -> None:
        w, h = self.size
        top = h - 330
        draw.rectangle((0, top, w, h - 56), fill=(210, 213, 219))
        for r, keys in enumerate(("qwertyuiop", "asdfghjkl", "zxcvbnm")):
            kw = w / 10
            x0 = (w - kw * len(keys)) / 2
            for k, ch in enumerate(keys):
                box = (
                    int(x0 + k * kw + 3),
                    int(top + 12 + r * 62),
                    int(x0 + (k + 1) * kw - 3),
                    int(top + 66 + r * 62),
                )
                draw.rounded_rectangle(box, radius=6, fill=(255, 255, 255))
                draw.text(
                    ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2),
                    ch,
                    font=font(self.fs),
                    fill=(20, 20, 20),
                    anchor="mm",
                )
        space = (int(w * 0.25), top + 200, int(w * 0.75), top + 254)
        draw.rounded_rectangle(space, radius=6, fill=(255, 255, 255))

    def detail(self, title: str, body: list[str], buttons: list[str]) -> PhoneScreen:
        w, _ = self.size
        img, draw = self._base()
        self._app_bar(draw, title)
        widgets = []
        y = 140
        for line in body:
            draw.text((28, y), line, font=font(self.fs), fill=self.ink, anchor="lm")
            y += 44
        y += 20
        for label in buttons:
            box = (28, y, w - 28, y + 64)
            draw.rounded_rectangle(box, radius=32, fill=self.accent)
            draw.text(
                (w / 2, y + 32), label, font=font(self.fs + 1), fill=(255, 255, 255), anchor="mm"
            )
            widgets.append(Widget("button", label, box))
            y += 84
        self._nav(draw)
        return PhoneScreen(add_field(img, self.rng, 30.0), widgets)

    def loading(self, app: str) -> PhoneScreen:
        w, h = self.size
        img, draw = self._base()
        draw.ellipse((w / 2 - 60, h / 2 - 140, w / 2 + 60, h / 2 - 20), fill=self.accent)
        draw.text((w / 2, h / 2 - 80), app[0], font=font(60), fill=(255, 255, 255), anchor="mm")
        draw.text(
            (w / 2, h / 2 + 30),
            f"Loading {app}...",
            font=font(self.fs + 2),
            fill=self.ink,
            anchor="mm",
        )
        self._nav(draw)
        return PhoneScreen(add_field(img, self.rng, 30.0), [])


def _click(wd: Widget) -> dict:
    cx, cy = wd.center
    return {"action_type": "click", "x": round(cx), "y": round(cy)}


def phone_episode(rng: np.random.Generator) -> tuple[str, list[tuple[PhoneScreen, dict]]]:
    """(goal, [(screen, action)]) of one Android-style episode; actions fit their screens."""
    phone = Phone(rng)
    w, h = phone.size
    apps = _sample(rng, APPS, int(rng.integers(8, 13)))
    kind = int(rng.integers(6))
    steps: list[tuple[PhoneScreen, dict]] = []
    if kind == 0:
        if "Settings" not in apps:
            apps[0] = "Settings"
        item = _pick(rng, SETTINGS)
        goal = f"Turn on {item} in the Settings app"
        home = phone.home(apps)
        if rng.random() < 0.5:
            steps.append((home, _click(home.find("Settings"))))
        else:
            steps.append((home, {"action_type": "open_app", "app_name": "Settings"}))
        rows = _sample(rng, [s for s in SETTINGS if s != item], 5)
        rows.insert(int(rng.integers(len(rows) + 1)), item)
        settings = phone.listing("Settings", rows)
        steps.append((settings, _click(settings.find(item))))
        page = phone.listing(item, [f"Use {item}", "Advanced", "About"], toggles=True)
        steps.append((page, _click(page.find(f"Use {item} switch"))))
        done = phone.detail(item, [f"{item} is on.", "Changes were saved."], ["Done"])
        steps.append((done, {"action_type": "status", "goal_status": "complete"}))
    elif kind == 1:
        app = _pick(rng, ("Chrome", "Maps", "Shop", "News"))
        if app not in apps:
            apps[-1] = app
        query = _pick(rng, QUERIES)
        goal = f"Search for {query} in {app}"
        home = phone.home(apps)
        steps.append((home, _click(home.find(app))))
        start = phone.listing(app, ["Recent", "Saved", "Popular today", "Nearby"], search="")
        steps.append((start, _click(start.find("Search"))))
        typing = phone.listing(app, [], search="", keyboard=True)
        steps.append((typing, {"action_type": "type", "text": query}))
        results = phone.listing(app, [f"{query} result {k}" for k in range(1, 6)], search=query)
        steps.append((results, {"action_type": "status", "goal_status": "complete"}))
    elif kind == 2:
        name = _pick(rng, CONTACTS)
        goal = f"Open the contact card of {name}"
        rows = sorted(_sample(rng, CONTACTS, 9))
        if name not in rows:
            rows[-1] = name
            rows.sort()
        first = phone.listing("Contacts", rows)
        steps.append((first, {"action_type": "scroll", "direction": "down"}))
        second = phone.listing("Contacts", [*rows[3:], "Add contact"])
        steps.append(
            (
                second,
                {
                    "action_type": "swipe",
                    "touch": [w // 2, int(h * 0.7)],
                    "lift": [w // 2, int(h * 0.3)],
                },
            )
        )
        third = phone.listing("Contacts", [*rows[rows.index(name) :], "Add contact"])
        steps.append((third, _click(third.find(name))))
        card = phone.detail(
            name, ["Mobile 555 0100", f"{name.split()[0].lower()}@example.com"], ["Call", "Message"]
        )
        steps.append((card, {"action_type": "status", "goal_status": "complete"}))
    elif kind == 3:
        app = _pick(rng, apps)
        goal = f"Remove the {app} shortcut from the home screen"
        home = phone.home(apps)
        icon = home.find(app)
        cx, cy = icon.center
        steps.append((home, {"action_type": "long_press", "x": round(cx), "y": round(cy)}))
        menu = phone.home(apps, menu_for=app)
        steps.append((menu, _click(menu.find("Remove"))))
        after = phone.home([a for a in apps if a != app])
        steps.append((after, {"action_type": "status", "goal_status": "complete"}))
    elif kind == 4:
        app = _pick(rng, ("Gmail", "Messages", "Notes", "Files"))
        goal = f"Leave {app} and go back to the home screen"
        inner = phone.detail(app, ["Item details", "Last edited today"], ["Open", "Share"])
        steps.append((inner, {"action_type": "navigate_back"}))
        outer = phone.listing(app, [f"{app} item {k}" for k in range(1, 7)])
        steps.append((outer, {"action_type": "navigate_home"}))
        home = phone.home(apps)
        steps.append((home, {"action_type": "status", "goal_status": "complete"}))
    else:
        app = _pick(rng, ("Weather", "Calendar", "Music", "Photos"))
        goal = f"Open {app} and wait until it has loaded"
        home = phone.home(apps)
        steps.append((home, {"action_type": "open_app", "app_name": app}))
        steps.append((phone.loading(app), {"action_type": "wait"}))
        ready = phone.listing(
            app, [f"{app} {label}" for label in ("Today", "This week", "Favourites", "Library")]
        )
        steps.append((ready, {"action_type": "status", "goal_status": "complete"}))
    return goal, steps


BAD_ANDROID = (
    '{"action_type": "click", "x": 540, "y":',
    '{"action_type": "teleport", "x": 3}',
    "tap the blue button please",
    '{"action_type": "click", "x": "left", "y": "top"}',
    "{'action_type': 'click' 'x': 10}",
    '["click", 10, 20]',
)


def android_action_json(action: dict) -> str:
    return json.dumps(action)
