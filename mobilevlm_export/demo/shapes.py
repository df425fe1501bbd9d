"""The synthetic visual question task the demo checkpoint is trained on.

Each image holds 1-3 shapes of one kind and one colour on a light, non-square canvas. Three questions are
asked of it; each answer is one word. Sample ``i`` of split ``seed`` is a pure function of (seed, i).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 170),
}
SHAPES = ("circle", "square", "triangle")
COUNTS = {1: "one", 2: "two", 3: "three"}
QUESTIONS = {
    "color": "What color is the shape?",
    "shape": "What shape is this?",
    "count": "How many shapes are there?",
}
TRAIN_SEED, HELDOUT_SEED = 1, 2


@dataclass(frozen=True)
class Sample:
    image: object  # PIL.Image
    color: str
    shape: str
    count: int

    def answer(self, kind: str) -> str:
        return {"color": self.color, "shape": self.shape, "count": COUNTS[self.count]}[kind]


def render(seed: int, index: int) -> Sample:
    """Render sample ``index`` of the split named by ``seed``."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed * 1_000_003 + index)
    w, h = rng.choice([(336, 252), (300, 300), (252, 336), (320, 240)])
    bg = tuple(rng.randint(225, 255) for _ in range(3))
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    color = rng.choice(list(COLORS))
    shape = rng.choice(SHAPES)
    count = rng.choice(list(COUNTS))
    boxes: list[tuple[int, int, int]] = []
    while len(boxes) < count:
        size = rng.randint(44, 72)
        x, y = rng.randint(4, w - size - 4), rng.randint(4, h - size - 4)
        if all(abs(x - bx) > (size + bs) // 2 + 10 or abs(y - by) > (size + bs) // 2 + 10 for bx, by, bs in boxes):
            boxes.append((x, y, size))
    rgb = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in COLORS[color])
    for x, y, s in boxes:
        if shape == "circle":
            draw.ellipse([x, y, x + s, y + s], fill=rgb)
        elif shape == "square":
            draw.rectangle([x, y, x + s, y + s], fill=rgb)
        else:
            draw.polygon([(x + s / 2, y), (x, y + s), (x + s, y + s)], fill=rgb)
    return Sample(img, color, shape, count)


def corpus() -> list[str]:
    """Every text the task can produce, for training the demo tokenizer."""
    from mobilevlm_export.runtime.prompt import SYSTEM_V1

    lines = [SYSTEM_V1, "USER:", "ASSISTANT:"]
    lines += list(QUESTIONS.values())
    lines += list(COLORS) + list(SHAPES) + list(COUNTS.values())
    return lines
