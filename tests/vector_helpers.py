"""Embedders with vectors a test chose, for checks whose maths (a threshold, a rank, a mean) must be compared
with a hand-computed reference; the real MiniLM runs in the tests that check what the scores mean."""

from __future__ import annotations

import math

import numpy as np


class FixedVectors:
    """`encode(texts)` returns the vector chosen for each text (KeyError for a text the test did not plan)."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = dict(vectors)
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        return np.array([self.vectors[t] for t in texts], dtype=np.float64).reshape(len(texts), -1)


def at_angle(degrees: float) -> list[float]:
    """A unit vector in the plane: the cosine of two of them is the cosine of the angle between them."""
    r = math.radians(degrees)
    return [math.cos(r), math.sin(r)]
