"""Hex rules: board, legal moves, winner detection, symmetries, network encoding."""

from hexsweep.hex.board import BLACK, EMPTY, WHITE, Board

__all__ = ["BLACK", "EMPTY", "WHITE", "Board"]
