"""TicTacToe (TextArena `TicTacToe-v0`): the smallest game with a real tactic, win-or-block.

TextArena's engine: seat 0 plays 'O' and moves first, seat 1 plays 'X'; a move is a cell number 0-8 in
square brackets. Random against random wins about 44% of games averaged over seats (58% moving first), so a
heuristic that takes wins and blocks losses is a clear, cheap yardstick.
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar

import textarena as ta

from strop.sandbox.games.base import GameAdapter, GameOptions, SeatView
from strop.sandbox.games.parsing import find_move, last_match

LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
_CELL = re.compile(r"^\s*(?:cell|square|move|position)?\s*:?\s*(-?\d+)\s*$", re.IGNORECASE)
_FREE_NUMBER = re.compile(r"(?<![\w.-])(?<!player )-?\d+(?!\w|\.\d)", re.IGNORECASE)  # not "4th", "Player 1"


def mark_of(seat: int) -> str:
    return "O" if seat == 0 else "X"


def board_of(env: Any) -> list[str]:
    """The nine cells, row by row: '', 'X' or 'O'."""
    return [cell for row in env.state.game_state["board"] for cell in row]


def render(board: list[str]) -> str:
    rows = [" | ".join(board[r * 3 + c] or str(r * 3 + c) for c in range(3)) for r in range(3)]
    return "\n---------\n".join(f" {row}" for row in rows)


def winning_cells(board: list[str], mark: str) -> list[int]:
    """Empty cells that complete a line of `mark`."""
    cells = set()
    for line in LINES:
        marks = [board[i] for i in line]
        if marks.count(mark) == 2 and marks.count("") == 1:
            cells.add(line[marks.index("")])
    return sorted(cells)


class TicTacToe(GameAdapter):
    name: ClassVar[str] = "tictactoe"
    description: ClassVar[str] = "TicTacToe on a 3x3 board (TextArena TicTacToe-v0); a draw is 0/0."
    answer_format: ClassVar[str] = (
        "End your reply with the number of an empty cell in square brackets, e.g. [4]."
    )

    def make_env(self, options: GameOptions) -> Any:
        return ta.make("TicTacToe-v0-raw")

    def rules(self, options: GameOptions, seat: int) -> str:
        return (
            f"You are Player {seat} in a game of Tic Tac Toe. You play '{mark_of(seat)}', your opponent "
            f"plays '{mark_of(1 - seat)}'. Player 0 moves first.\n"
            "Players take turns putting their mark in an empty cell of a 3x3 board; cells are numbered 0-8, "
            "left to right, top to bottom. Three of your marks in a row, column or diagonal wins; a full "
            "board without a line is a draw. Choosing an occupied cell or a number outside 0-8 loses at once."
        )

    def state_text(self, env: Any, seat: int) -> str:
        board = board_of(env)
        empty = ", ".join(str(i) for i, c in enumerate(board) if not c)
        return (
            f"Current board (numbers are empty cells):\n{render(board)}\n\n"
            f"You play '{mark_of(seat)}'. Empty cells: {empty}."
        )

    def info(self, env: Any, seat: int) -> dict[str, Any]:
        return {"board": board_of(env), "mark": mark_of(seat), "opponent_mark": mark_of(1 - seat)}

    def legal_moves(self, env: Any, seat: int) -> list[str]:
        return [f"[{i}]" for i, cell in enumerate(board_of(env)) if not cell]

    def parse(self, text: str) -> str | None:
        return find_move(text, self._read, self._read_free)

    def illegal_reason(self, env: Any, seat: int, action: str) -> str | None:
        cell = int(action.strip("[]"))
        if not 0 <= cell <= 8:
            return f"cell {cell} is off the board (cells are 0-8)"
        occupant = board_of(env)[cell]
        return f"cell {cell} is already taken by '{occupant}'" if occupant else None

    def heuristic(self, view: SeatView, rng: random.Random) -> str:
        """Win if possible, else block, else centre, else a corner, else any cell (ties broken at random)."""
        board, me, them = view.info["board"], view.info["mark"], view.info["opponent_mark"]
        for choices in (
            winning_cells(board, me),
            winning_cells(board, them),
            [4] if not board[4] else [],
            [c for c in (0, 2, 6, 8) if not board[c]],
            [c for c in range(9) if not board[c]],
        ):
            if choices:
                return f"[{rng.choice(choices)}]"
        raise ValueError("no empty cell on a board of a game that is not over")

    @staticmethod
    def _read(candidate: str) -> str | None:
        match = _CELL.match(candidate)
        return f"[{int(match.group(1))}]" if match else None

    @staticmethod
    def _read_free(text: str) -> str | None:
        match = last_match(_FREE_NUMBER, text)
        return f"[{int(match.group(0))}]" if match else None
