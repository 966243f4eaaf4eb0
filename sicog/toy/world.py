"""The toy world's scenes: coloured shapes on a 3x3 grid, with every fact needed as ground truth.

A scene holds 1-4 objects, each a unique (colour, shape) pair in its own grid cell, with a relative
size, an optional digit label, and optionally a small dot in an empty corner and a thin border. All
randomness comes from the ``random.Random`` passed in, so a seed fixes the world.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sicog.toy.settings import TOY_MAX_SLICE_NUMS, TOY_PATCH_SIZE, TOY_SCALE_RESOLUTION

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "orange": (247, 129, 20),
    "yellow": (240, 214, 30),
    "green": (44, 160, 60),
    "blue": (31, 90, 220),
    "purple": (135, 62, 190),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (246, 246, 246),
    "light gray": (188, 188, 188),
    "dark gray": (78, 78, 78),
    "black": (18, 18, 18),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = ("small", "medium", "large")
# Object side as a fraction of the smaller side of its grid cell.
SIZE_FACTORS = {"small": 0.42, "medium": 0.64, "large": 0.88}
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
CORNERS = ("top left", "top right", "bottom left", "bottom right")
CORNER_CELLS = {"top left": (0, 0), "top right": (0, 2), "bottom left": (2, 0), "bottom right": (2, 2)}
RELATIONS = ("left of", "right of", "above", "below")

# (width, height) -> weight. With the toy slicing settings 64x64 stays whole, 96x64, 64x96 and 128x64
# become 2 slices, 96x96, 128x96 and 128x128 become 4 (checked in the tests with plan_slices).
IMAGE_SIZES: dict[tuple[int, int], int] = {
    (64, 64): 3,
    (96, 64): 2,
    (64, 96): 1,
    (128, 64): 1,
    (96, 96): 1,
    (128, 96): 2,
    (128, 128): 1,
}
OBJECT_COUNT_WEIGHTS = {1: 4, 2: 4, 3: 2, 4: 1}
LABEL_PROBABILITY = 0.5  # for medium and large objects; small ones are too small for a readable digit
MARK_PROBABILITY = 0.5
BORDER_PROBABILITY = 0.25
SLICING = {
    "scale_resolution": TOY_SCALE_RESOLUTION,
    "patch_size": TOY_PATCH_SIZE,
    "max_slice_nums": TOY_MAX_SLICE_NUMS,
}


def position_name(row: int, col: int) -> str:
    """Canonical name of a grid cell: "top left", "top center", ..., "center", ..., "bottom right"."""
    if (row, col) == (1, 1):
        return "center"
    return f"{ROWS[row]} {COLUMNS[col]}"


POSITIONS = tuple(position_name(r, c) for r in range(3) for c in range(3))


@dataclass(frozen=True)
class SceneObject:
    """One shape: what it is, where (grid row and column), and its jitter inside the cell (-1..1)."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    label: int | None = None
    dx: float = 0.0
    dy: float = 0.0

    @property
    def name(self) -> str:
        """The object's unique name in its scene, e.g. "red circle"."""
        return f"{self.color} {self.shape}"

    @property
    def position(self) -> str:
        """Canonical position name of the object's grid cell."""
        return position_name(self.row, self.col)


@dataclass(frozen=True)
class Mark:
    """A small dot in one corner of the image (peripheral content)."""

    color: str
    corner: str


@dataclass(frozen=True)
class Scene:
    """Everything drawn in one image."""

    width: int
    height: int
    background: str
    objects: tuple[SceneObject, ...]
    mark: Mark | None = None
    border: str | None = None

    def key(self) -> tuple:
        """What makes two scenes the same picture to a viewer (jitter ignored): used to keep splits disjoint."""
        objects = tuple(sorted((o.shape, o.color, o.size, o.row, o.col, o.label or 0) for o in self.objects))
        mark = (self.mark.color, self.mark.corner) if self.mark else None
        return (self.width, self.height, self.background, objects, mark, self.border)

    def find(self, name: str) -> SceneObject | None:
        """The object called ``name`` ("red circle"), or None."""
        return next((o for o in self.objects if o.name == name), None)

    def relations(self) -> list[tuple[str, str, str]]:
        """Every (subject, relation, object) that holds between two objects, from their grid cells."""
        found = []
        for a in self.objects:
            for b in self.objects:
                if a is b:
                    continue
                for relation in RELATIONS:
                    if holds(a, relation, b):
                        found.append((a.name, relation, b.name))
        return found

    def object_box(self, obj: SceneObject) -> tuple[float, float, float, float]:
        """The object's bounding square ``(x0, y0, x1, y1)`` in image pixels."""
        cell_w, cell_h = self.width / 3, self.height / 3
        side = SIZE_FACTORS[obj.size] * min(cell_w, cell_h)
        # Jitter moves the object by up to half of its free room, so it never leaves its cell.
        cx = (obj.col + 0.5) * cell_w + obj.dx * (cell_w - side) / 4
        cy = (obj.row + 0.5) * cell_h + obj.dy * (cell_h - side) / 4
        return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2

    def ground_truth(self) -> dict:
        """The scene as a JSON-ready ground-truth record (without the image path)."""
        return {
            "width": self.width,
            "height": self.height,
            "background": self.background,
            "objects": [
                {
                    "name": o.name,
                    "shape": o.shape,
                    "color": o.color,
                    "size": o.size,
                    "position": o.position,
                    "row": o.row,
                    "col": o.col,
                    "label": o.label,
                    "bbox": [round(v) for v in self.object_box(o)],
                }
                for o in self.objects
            ],
            "mark": None if self.mark is None else {"color": self.mark.color, "corner": self.mark.corner},
            "border": self.border,
            "relations": [list(r) for r in self.relations()],
        }


def holds(a: SceneObject, relation: str, b: SceneObject) -> bool:
    """Whether ``a`` is ``relation`` ``b``: strictly further left/right/up/down by grid column or row."""
    if relation == "left of":
        return a.col < b.col
    if relation == "right of":
        return a.col > b.col
    if relation == "above":
        return a.row < b.row
    if relation == "below":
        return a.row > b.row
    raise ValueError(f"unknown relation {relation!r}; choose from {RELATIONS}")


def _weighted(rng: random.Random, table: dict) -> object:
    keys = list(table)
    return rng.choices(keys, weights=[table[k] for k in keys])[0]


def sample_scene(rng: random.Random) -> Scene:
    """Draw one random scene."""
    width, height = _weighted(rng, IMAGE_SIZES)
    background = rng.choice(list(BACKGROUNDS))
    count = _weighted(rng, OBJECT_COUNT_WEIGHTS)
    cells = rng.sample(range(9), count)
    kinds = rng.sample([(c, s) for c in COLORS for s in SHAPES], count)
    objects = []
    for cell, (color, shape) in zip(cells, kinds):
        size = rng.choice(SIZES)
        label = rng.randint(1, 9) if size != "small" and rng.random() < LABEL_PROBABILITY else None
        dx, dy = round(rng.uniform(-1, 1), 2), round(rng.uniform(-1, 1), 2)
        objects.append(SceneObject(shape, color, size, cell // 3, cell % 3, label, dx, dy))
    mark = None
    if rng.random() < MARK_PROBABILITY:
        taken = {(o.row, o.col) for o in objects}
        free = [c for c in CORNERS if CORNER_CELLS[c] not in taken]
        if free:
            mark = Mark(rng.choice(list(COLORS)), rng.choice(free))
    border = rng.choice(list(COLORS)) if rng.random() < BORDER_PROBABILITY else None
    return Scene(width, height, background, tuple(objects), mark, border)

