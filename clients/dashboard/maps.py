"""Map panels: a titled image of a count map or a cluster label map, half blocks or graphics."""

from __future__ import annotations

import numpy as np
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Static

from edxlive.clients.dashboard.halfblock import HalfBlockImage
from edxlive.clients.dashboard.palette import NOISE_COLOUR, cluster_colour, hex_rgb, normalise, ramp

# Set by run_dashboard before the app starts (the terminal can only be queried then): True when
# textual-image found Sixel or the Kitty graphics protocol.
GRAPHICS = {"enabled": False}


def detect_graphics() -> bool:
    """Ask the terminal (before Textual owns it) whether it speaks Sixel or TGP."""
    try:
        from textual_image import renderable
        from textual_image.renderable.halfcell import Image as Halfcell
        from textual_image.renderable.unicode import Image as Unicode
    except Exception:
        return False
    return renderable.Image not in (Halfcell, Unicode)


def count_rgb(image: np.ndarray) -> np.ndarray:
    return ramp(normalise(image))


def label_rgb(labels: np.ndarray, colours: dict[int, int] | None = None) -> np.ndarray:
    """RGB of a label map; ``colours`` maps a label to its palette index (default: itself)."""
    lut_ids = [int(i) for i in np.unique(labels)]
    rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
    for i in lut_ids:
        index = (colours or {}).get(i, i) if i >= 0 else -1
        rgb[labels == i] = hex_rgb(cluster_colour(index) if i >= 0 else NOISE_COLOUR)
    return rgb


class MapView(Vertical):
    """A title line over an image that fills the rest of the panel."""

    DEFAULT_CSS = """
    MapView { height: 1fr; width: 1fr; }
    MapView > .map-title { height: 1; width: 1fr; text-style: bold; }
    MapView > .map-image { height: 1fr; width: 1fr; }
    """

    def __init__(self, title: str = "", *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._title = title

    def compose(self) -> ComposeResult:
        yield Static(self._title, classes="map-title", markup=False)
        yield self._make_image()

    def _make_image(self) -> Widget:
        if GRAPHICS["enabled"]:
            from textual_image.widget import Image

            return Image(classes="map-image")
        return HalfBlockImage(classes="map-image")

    def set_title(self, title: str) -> None:
        self.query_one(".map-title", Static).update(title)

    def set_rgb(self, rgb: np.ndarray | None) -> None:
        image = self.query_one(".map-image")
        if isinstance(image, HalfBlockImage):
            image.set_rgb(rgb)
            return
        from PIL import Image as PILImage

        image.image = None if rgb is None else PILImage.fromarray(rgb, "RGB")  # type: ignore[attr-defined]
