"""Map panels: a titled image of a count map or a cluster label map, half blocks or graphics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Static

from edxlive.clients.dashboard.halfblock import HalfBlockImage, fit
from edxlive.clients.dashboard.palette import NOISE_COLOUR, cluster_colour, hex_rgb, normalise, ramp

if TYPE_CHECKING:
    import numpy as np

# Set by run_dashboard before the app starts (the terminal can only be queried then): True when
# textual-image found Sixel or the Kitty graphics protocol.
GRAPHICS = {"enabled": False}
GRAPHICS_MIN_SIDE = 512  # pixels: enough for a sharp map in any cell size


def detect_graphics() -> bool:
    """Ask the terminal (before Textual owns it) whether it speaks Sixel or the Kitty graphics protocol."""
    from edxlive.clients.dashboard.terminal import graphics_hint

    if not graphics_hint():  # the common case: textual-image and its slower probes are not needed
        return False
    try:
        from textual_image import renderable
        from textual_image import widget as _widget  # noqa: F401  (measures the cell size while it still can)
        from textual_image.renderable.halfcell import Image as Halfcell
        from textual_image.renderable.unicode import Image as Unicode
    except Exception:  # no textual-image, or a terminal that answers nonsense: half blocks it is
        return False
    return renderable.Image not in (Halfcell, Unicode)


def upscale(rgb: np.ndarray, min_side: int = GRAPHICS_MIN_SIDE) -> np.ndarray:
    """Nearest-neighbour enlargement by a whole factor, so that the terminal's own smooth scaling
    cannot blend neighbouring cluster colours into colours of no cluster."""
    import numpy as np

    factor = max(1, -(-min_side // max(rgb.shape[:2])))
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def count_rgb(image: np.ndarray) -> np.ndarray:
    return ramp(normalise(image))


def label_rgb(labels: np.ndarray, colours: dict[int, int] | None = None) -> np.ndarray:
    """RGB of a label map; ``colours`` maps a label to its palette index (default: itself)."""
    import numpy as np

    lut_ids = [int(i) for i in np.unique(labels)]
    rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
    for i in lut_ids:
        index = (colours or {}).get(i, i) if i >= 0 else -1
        rgb[labels == i] = hex_rgb(cluster_colour(index) if i >= 0 else NOISE_COLOUR)
    return rgb


class MapView(Vertical):
    """A title line over an image that fills the rest of the panel, square pixels, centred."""

    DEFAULT_CSS = """
    MapView { height: 1fr; width: 1fr; align-horizontal: center; }
    MapView > .map-title { height: 1; width: 1fr; text-style: bold; }
    MapView > HalfBlockImage { height: 1fr; width: 1fr; }
    """

    def __init__(self, title: str = "", *, crisp: bool = False, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._title = title
        self.crisp = crisp  # a label map (see halfblock.resample)
        self._rgb: np.ndarray | None = None

    def compose(self) -> ComposeResult:
        yield Static(self._title, classes="map-title", markup=False)
        yield self._make_image()

    def _make_image(self) -> Widget:
        if GRAPHICS["enabled"]:
            from textual_image.widget import Image

            return Image(classes="map-image")
        return HalfBlockImage(crisp=self.crisp, classes="map-image")

    def set_title(self, title: str) -> None:
        self.query_one(".map-title", Static).update(title)

    def set_rgb(self, rgb: np.ndarray | None) -> None:
        self._rgb = rgb
        image = self.query_one(".map-image")
        if isinstance(image, HalfBlockImage):
            image.set_rgb(rgb)
        else:
            self._show_graphics(image)

    def on_resize(self) -> None:
        image = self.query_one(".map-image")
        if not isinstance(image, HalfBlockImage):
            self._show_graphics(image)

    def _show_graphics(self, image: Widget) -> None:
        """textual-image fills whatever box it is given, so the box gets the map's aspect: the same
        cells the half blocks would take (cells about twice as tall as wide)."""
        from PIL import Image as PILImage

        if self._rgb is None:
            image.image = None  # type: ignore[attr-defined]
            return
        width, height = fit(self._rgb.shape[:2], self.size.width, max(self.size.height - 1, 0))
        image.styles.width, image.styles.height = max(width, 1), max(height, 1)
        image.image = PILImage.fromarray(upscale(self._rgb), "RGB")  # type: ignore[attr-defined]
