"""Colours: a perceptual ramp for count maps and one colour-blind-safe set for clusters.

Hand-written rather than taken from matplotlib: importing matplotlib costs about half a second,
and the dashboard must start in about one. The viridis anchors below are sampled from
matplotlib's ``viridis`` (linear interpolation between 9 anchors is visually indistinguishable
at terminal resolution). numpy is imported inside the functions that need it, so that the
dashboard's first frame does not wait for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

VIRIDIS_ANCHORS = (
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
)

# Okabe & Ito (2008) without black (invisible on a dark terminal), then Tol's "muted" for more.
CLUSTER_COLOURS = (
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
    "#882255", "#44AA99", "#999933", "#AA4499", "#DDCC77", "#332288", "#117733",
)
NOISE_COLOUR = "#3C3C3C"  # label -1: noise or unobserved, a dark grey distinct from every cluster colour
BLANK_COLOUR = "#000000"


def hex_rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def cluster_colour(index: int) -> str:
    if index < 0:
        return NOISE_COLOUR
    return CLUSTER_COLOURS[index % len(CLUSTER_COLOURS)]


def ramp(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (NaN allowed) to uint8 RGB (..., 3) along viridis; NaN is black."""
    import numpy as np

    anchors = np.array(VIRIDIS_ANCHORS, dtype=np.float64)
    v = np.nan_to_num(np.clip(values, 0.0, 1.0), nan=0.0) * (len(anchors) - 1)
    lo = np.floor(v).astype(int).clip(0, len(anchors) - 2)
    t = (v - lo)[..., None]
    rgb = anchors[lo] * (1 - t) + anchors[lo + 1] * t
    rgb[np.isnan(values)] = 0
    return rgb.astype(np.uint8)


def normalise(image: np.ndarray, robust: bool = True) -> np.ndarray:
    """Scale to [0, 1]; robust uses the 1st–99th percentile so one hot pixel cannot flatten the map."""
    import numpy as np

    a = np.asarray(image, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.full(a.shape, np.nan)
    lo, hi = (percentiles(finite, (1, 99)) if robust else (finite.min(), finite.max()))
    if hi <= lo:
        hi = lo + 1.0
    return (a - lo) / (hi - lo)


def percentiles(values: np.ndarray, q: tuple[float, ...]) -> np.ndarray:
    """``np.percentile(values, q)`` of a non-empty 1-D float array, the same numbers (numpy's
    default "linear" method: its partition and its interpolation), but without np.percentile,
    which imports numpy.ma on its way (np.unique): ~15 ms before the daemon's first map is drawn."""
    import numpy as np

    n = values.size
    virtual = (n - 1) * (np.asarray(q, dtype=np.float64) / 100)
    below = np.floor(virtual)
    last = virtual >= n - 1  # numpy takes the last value for both neighbours there
    below[last] = -1
    above = np.where(last, -1, below + 1).astype(np.intp)
    below = below.astype(np.intp)
    part = np.partition(values, sorted({int(i) % n for i in (*below, *above)}))
    a, b, t = part[below], part[above], virtual - below
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def match_colours(reference: np.ndarray, other: np.ndarray) -> dict[int, int]:
    """Colour index for each cluster of ``other`` so that a phase keeps its colour across workflows:
    each cluster takes the colour of the reference cluster it overlaps most, greedily by overlap;
    leftovers take the first unused colours."""
    import numpy as np

    ids_o = [int(i) for i in np.unique(other) if i >= 0]
    ids_r = [int(i) for i in np.unique(reference) if i >= 0]
    if reference.shape != other.shape or not ids_o:
        return {i: i for i in ids_o}
    pairs = []
    for o in ids_o:
        mask = other == o
        for r in ids_r:
            n = int(np.count_nonzero(mask & (reference == r)))
            if n:
                pairs.append((n, o, r))
    mapping: dict[int, int] = {}
    used: set[int] = set()
    for _, o, r in sorted(pairs, reverse=True):
        if o not in mapping and r not in used:
            mapping[o], _ = r, used.add(r)
    spare = (c for c in range(len(CLUSTER_COLOURS) * 4) if c not in used and c not in ids_r)
    for o in ids_o:
        if o not in mapping:
            mapping[o] = next(spare)
    return mapping
