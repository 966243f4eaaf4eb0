"""The toy world's scenes: coloured shapes on a grid of cells, with every fact needed as ground truth.

A scene is a grid of 1-3 rows and 1-3 columns of square cells; each object is a unique (colour, shape)
pair in its own cell, with a relative size, an optional digit label, and optionally a small dot in an
empty corner and a thin border. Positions are always named on a 3x3 scheme ("top left" ... "bottom
right"): a 2-row grid has a top and a bottom row, a 1-row grid a middle one. A :class:`Layout` says
which grids, cell size and attributes a world draws from. All randomness comes from the
``random.Random`` passed in, so a seed fixes the world.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

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
UNLABELLED_SIZE = "small"  # too small for a digit: no object of this size carries a label
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
CORNERS = ("top left", "top right", "bottom left", "bottom right")
CORNER_CELLS = {"top left": (0, 0), "top right": (0, 2), "bottom left": (2, 0), "bottom right": (2, 2)}
RELATIONS = ("left of", "right of", "above", "below")

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
# The rows (or columns) of the 3x3 naming scheme that a grid of 1, 2 or 3 rows (or columns) uses.
GRID_LINES = {1: (1,), 2: (0, 2), 3: (0, 1, 2)}


@dataclass(frozen=True)
class Layout:
    """What a world draws: grid shapes (rows, cols) -> weight, cell size in pixels, and the attributes."""

    name: str
    grids: dict[tuple[int, int], int]
    cell: int
    # Every cell holds an object (no cell shows only background), else ``object_counts`` decides.
    full: bool
    colors: tuple[str, ...]
    shapes: tuple[str, ...]
    sizes: tuple[str, ...]
    backgrounds: tuple[str, ...]
    object_counts: dict[int, int] = field(default_factory=dict)
    label_probability: float = 0.0  # for objects of other sizes than UNLABELLED_SIZE
    mark_probability: float = 0.0
    border_probability: float = 0.0

    def positions(self) -> tuple[str, ...]:
        """Every position name an object can have in this layout."""
        return tuple(p for p in POSITIONS if any(_on_grid(p, rows, cols) for rows, cols in self.grids))


def _on_grid(position: str, rows: int, cols: int) -> bool:
    return any(position_name(r, c) == position for r in GRID_LINES[rows] for c in GRID_LINES[cols])


LAYOUTS: dict[str, Layout] = {
    # Learnable by a tiny model on a CPU: a full 2x2 grid of 16-pixel cells, so each cell is exactly one
    # patch of the toy tower and no image token shows background alone; four well-separated colours and
    # shapes, two sizes, no digits, dots or borders.
    "grid": Layout(
        "grid", {(2, 2): 1}, 16, True, ("red", "yellow", "green", "blue"), ("circle", "square", "triangle", "cross"),
        ("small", "large"), tuple(BACKGROUNDS),
    ),
    # Exercises every code path (slicing, empty cells, digits, dots, borders): 32-pixel cells, so grids of
    # 2-9 cells give images of 32-96 pixels, most of which the toy slicing cuts into 2-4 slices.
    "sliced": Layout(
        "sliced", {(1, 1): 1, (1, 2): 1, (1, 3): 1, (2, 2): 2, (2, 3): 2, (3, 2): 1, (3, 3): 2}, 32, False,
        tuple(COLORS), SHAPES, SIZES, tuple(BACKGROUNDS), {1: 4, 2: 4, 3: 2, 4: 1}, 0.5, 0.5, 0.25,
    ),
}


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
    rows: int = 3
    cols: int = 3
    layout: str = "sliced"

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
        cell_w, cell_h = self.width / self.cols, self.height / self.rows
        side = SIZE_FACTORS[obj.size] * min(cell_w, cell_h)
        col, row = GRID_LINES[self.cols].index(obj.col), GRID_LINES[self.rows].index(obj.row)
        # Jitter moves the object by up to half of its free room, so it never leaves its cell.
        cx = (col + 0.5) * cell_w + obj.dx * (cell_w - side) / 4
        cy = (row + 0.5) * cell_h + obj.dy * (cell_h - side) / 4
        return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2

    def ground_truth(self) -> dict:
        """The scene as a JSON-ready ground-truth record (without the image path)."""
        return {
            "width": self.width,
            "height": self.height,
            "layout": self.layout,
            "grid": [self.rows, self.cols],
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


def sample_scene(rng: random.Random, layout: Layout = LAYOUTS["sliced"]) -> Scene:
    """Draw one random scene of ``layout``."""
    rows, cols = _weighted(rng, layout.grids)
    background = rng.choice(layout.backgrounds)
    cells = [(r, c) for r in GRID_LINES[rows] for c in GRID_LINES[cols]]
    count = len(cells) if layout.full else min(_weighted(rng, layout.object_counts), len(cells))
    cells = rng.sample(cells, count)
    kinds = rng.sample([(c, s) for c in layout.colors for s in layout.shapes], count)
    objects = []
    for (row, col), (color, shape) in zip(cells, kinds):
        size = rng.choice(layout.sizes)
        label = rng.randint(1, 9) if size != UNLABELLED_SIZE and rng.random() < layout.label_probability else None
        dx, dy = round(rng.uniform(-1, 1), 2), round(rng.uniform(-1, 1), 2)
        objects.append(SceneObject(shape, color, size, row, col, label, dx, dy))
    mark = None
    if rng.random() < layout.mark_probability:
        taken = {(o.row, o.col) for o in objects}
        free = [c for c in CORNERS if CORNER_CELLS[c] not in taken and _on_grid(c, rows, cols)]
        if free:
            mark = Mark(rng.choice(layout.colors), rng.choice(free))
    border = rng.choice(layout.colors) if rng.random() < layout.border_probability else None
    size = (cols * layout.cell, rows * layout.cell)
    return Scene(*size, background, tuple(objects), mark, border, rows, cols, layout.name)
