"""Cheap extra trainings that give a scaling fit the points a campaign lacks."""

from collections.abc import Sequence


def neighbour_size(size: str, ladder: Sequence[str]) -> str | None:
    """One size down the ladder, or one up from the smallest (None for a ladder of one)."""
    k = list(ladder).index(size)
    if k > 0:
        return ladder[k - 1]
    return ladder[1] if len(ladder) > 1 else None


def next_size(size: str, ladder: Sequence[str]) -> str | None:
    """One size up the ladder, None at the top."""
    k = list(ladder).index(size)
    return ladder[k + 1] if k + 1 < len(ladder) else None


def plan_probes(
    size: str, ladder: Sequence[str], fractions: Sequence[float]
) -> list[tuple[str, float]]:
    """(size, fraction of the training data) of each probe: every fraction at the current
    size and at its neighbour, so the joint law sees three data counts and two sizes."""
    other = neighbour_size(size, ladder)
    sizes = [size] + ([other] if other else [])
    return [(s, f) for s in sizes for f in sorted(set(fractions))]
