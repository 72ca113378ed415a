"""The paper's operating points per model family, and which (α, β) a circulation node uses.

A circulation node's ``operating_point`` input chooses between the paper's point for the
connected model (the widget default) and the α, β widgets. The direction differs by family:
SDXL steers with α above 1 (table 3), SD3 with α slightly below 1 (appendix B.1, table 7), so a
single α default would point the wrong way on one of them.

API prompts written before the input existed do not carry it; for them the node keeps its
earlier meaning (the α, β inputs), so scripted sweeps over α and β are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_POINT = "paper point for this model"
CUSTOM = "custom α, β"
OPERATING_POINTS = (PAPER_POINT, CUSTOM)
ABSENT = CUSTOM  # what a prompt without the input means (prompts from before the input existed)

# How the report and the node name a family (the adapter's name -> words).
FAMILY_TITLES = {"sdxl": "SDXL", "sd3": "SD3", "lumina2": "Lumina 2", "z-image": "Z-Image",
                 "anima": "Anima", "hidream": "HiDream",
                 "auraflow": "AuraFlow", "krea2": "Krea 2",
                 "mage-flow": "Mage-Flow", "kandinsky5": "Kandinsky 5"}


@dataclass(frozen=True)
class PaperPoint:
    alpha: float
    beta: float
    source: str  # where in the paper, for the node's text


SKEW_POINTS = {
    # UNets (SDXL, also SD1.x/SD2.x, which share the adapter) take the SDXL point.
    "sdxl": PaperPoint(1.05, 3.0, "the paper's SDXL point (section 6, fig. 7, table 6)"),
    "sd3": PaperPoint(0.95, 3.0, "the paper's SD3 point (appendix B.1, table 7)"),
}
ADAPTIVE_POINTS = {
    "sdxl": PaperPoint(1.2, 5.0, "the paper's adaptive SDXL point (table 6)"),
    # The paper evaluates the adaptive variant on SDXL only: its SD3 static point, which the
    # adaptive damping can only weaken, keeps the SD3 direction (alpha < 1).
    "sd3": PaperPoint(0.95, 3.0, "the paper's SD3 point (table 7; no adaptive SD3 result)"),
}


@dataclass(frozen=True)
class UsedPoint:
    """The α, β a node steers with, and why, for the node's text and the report."""

    alpha: float
    beta: float
    why: str
    node: str = ""  # the node's title, filled in by the node

    @property
    def text(self) -> str:
        return f"α {_num(self.alpha)}, β {_num(self.beta)}: {self.why}"

    def as_dict(self) -> dict:
        return {"node": self.node, "alpha": self.alpha, "beta": self.beta, "why": self.why,
                "text": self.text}


def _num(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if value == value else str(value)


def family_title(family: str) -> str:
    return FAMILY_TITLES.get(family, family.upper())


def choose_point(points: dict[str, PaperPoint], choice: str, family: str | None,
                 alpha: float, beta: float) -> UsedPoint:
    """The (α, β) to steer with. ``family`` is the connected model's adapter name (only
    needed for the paper point). A family the paper has no point for uses the widgets."""
    if choice not in OPERATING_POINTS:
        raise ValueError(f"operating_point must be one of {list(OPERATING_POINTS)}, got "
                         f"{choice!r}")
    if choice == CUSTOM:
        return UsedPoint(alpha, beta, "custom (the α, β inputs)")
    point = points.get(family or "")
    if point is None:
        return UsedPoint(alpha, beta, f"the paper gives no point for {family_title(family or '?')}"
                         " models; the α, β inputs")
    return UsedPoint(point.alpha, point.beta, f"{point.source}, {family_title(family)}")
