"""What every workbench figure shares: colour-blind-safe defaults and the axes it draws in.

Every figure function takes ax= (draw one panel there, to compose figures) and returns the
matplotlib Figure it drew in.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with the workbench
    from matplotlib.figure import Figure

# Okabe & Ito (2008), "Color Universal Design": eight colours that stay distinct under protanopia,
# deuteranopia and tritanopia (matplotlib's tab10 puts red and green side by side); black last,
# as the scatter plots ring points in it.
OKABE_ITO = (
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#F0E442",  # yellow
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#000000",  # black
)
# Beyond eight classes no palette stays distinct for every reader: the marker changes too.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
# Perceptually uniform sequential maps whose lightness rises monotonically, so order reads the same
# with any colour vision and in greyscale (jet's does not, and it invents bands).
HEATMAP_CMAP = "viridis"  # value matrices (cosine similarities)
SALIENCY_CMAP = "inferno"  # maps over photos: dark where nothing is, brightest at the peak


def colour(index: int) -> str:
    """The palette colour of class index (cycling)."""
    return OKABE_ITO[index % len(OKABE_ITO)]


def marker(index: int) -> str:
    """The marker of class index: changes after each run through the palette."""
    return MARKERS[index // len(OKABE_ITO) % len(MARKERS)]


def axes(ax=None, figsize: tuple[float, float] = (6, 5)):
    """ax, or the one axes of a new pyplot figure (so a notebook shows it), and its Figure."""
    if ax is None:
        import matplotlib.pyplot as plt

        ax = plt.figure(figsize=figsize).add_subplot()
    return ax, figure_of(ax)


def figure_of(ax) -> "Figure":
    """The top-level Figure of ax (not a SubFigure)."""
    return ax.figure.figure  # a SubFigure's .figure is its root Figure, a Figure's is itself
