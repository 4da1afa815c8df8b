"""PEARL's buffers, on the agent's device: per-task replay rings for SAC and per-task
encoder buffers for contexts."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class ReplayStore:
    """Per-task ring buffers of packed transitions, all rows in one growing tensor.

    ``data`` [rows, width] holds every task's transitions; ``rows[t]`` lists the rows of task
    t (oldest first until its ring wraps at ``capacity``, then the oldest is overwritten in
    place). The tensor grows by doubling, so memory follows what was filled.
    """

    def __init__(self, num_tasks: int, width: int, capacity: int, device: torch.device):
        self.num_tasks, self.width, self.capacity, self.device = num_tasks, width, capacity, device
        self.data = torch.zeros((0, width), device=device)
        self.used = 0  # rows of `data` in use
        self._rows = [np.zeros(0, np.int64) for _ in range(num_tasks)]  # with spare room
        self.length = np.zeros(num_tasks, np.int64)  # transitions held per task
        self.next = np.zeros(num_tasks, np.int64)  # ring position of the oldest, once full

    def rows(self, task: int) -> np.ndarray:
        return self._rows[task][:self.length[task]]

    def _reserve(self, rows: int) -> None:
        if rows > len(self.data):
            grown = torch.zeros((max(rows, 2 * len(self.data), 1024), self.width),
                                device=self.device)
            grown[:self.used] = self.data[:self.used]
            self.data = grown

    def add(self, task: int, values: torch.Tensor) -> None:
        values = values[-self.capacity:]  # more than fit: only the newest
        n, length = len(values), int(self.length[task])
        fresh_count = min(n, self.capacity - length)
        fresh = np.arange(self.used, self.used + fresh_count, dtype=np.int64)
        self._reserve(self.used + fresh_count)
        self.used += fresh_count
        table = self._rows[task]
        if length + fresh_count > len(table):
            room = max(length + fresh_count, 2 * len(table))
            table = np.concatenate([table[:length], np.zeros(room - length, np.int64)])
            self._rows[task] = table
        table[length:length + fresh_count] = fresh
        self.length[task] = length + fresh_count
        reused_count = n - fresh_count
        positions = (self.next[task] + np.arange(reused_count)) % self.capacity
        self.next[task] = (self.next[task] + reused_count) % self.capacity
        target = np.concatenate([fresh, table[positions]])
        self.data[torch.from_numpy(target).to(self.device)] = values.to(self.device)

    def table(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(every task's rows concatenated, offset of each task in it, transitions per task)."""
        flat = np.concatenate([self.rows(t) for t in range(self.num_tasks)])
        offsets = np.concatenate([[0], np.cumsum(self.length)[:-1]]).astype(np.int64)
        arrays = (flat, offsets, self.length.copy())
        return tuple(torch.from_numpy(a).to(self.device) for a in arrays)

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.data[:self.used].cpu(), "length": self.length.copy(),
                "next": self.next.copy(),
                "rows": np.concatenate([self.rows(t) for t in range(self.num_tasks)])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["length"]) != self.num_tasks:
            raise ValueError(f"replay buffer of {len(state['length'])} tasks, the agent has "
                             f"{self.num_tasks}")
        self.data = state["data"].to(self.device, torch.float32).clone()
        self.used = len(self.data)
        self.length = np.asarray(state["length"], np.int64).copy()
        self.next = np.asarray(state["next"], np.int64).copy()
        bounds = np.concatenate([[0], np.cumsum(self.length)])
        rows = np.asarray(state["rows"], np.int64)
        self._rows = [rows[bounds[t]:bounds[t + 1]].copy() for t in range(self.num_tasks)]


class ContextStore:
    """Per-task encoder buffers: a fixed [tasks x capacity, width] tensor, allocated at the
    first add. Each task's slice is refilled from scratch whenever the task is collected."""

    def __init__(self, num_tasks: int, width: int, capacity: int, device: torch.device):
        self.num_tasks, self.width, self.capacity, self.device = num_tasks, width, capacity, device
        self.data = torch.zeros((0, width), device=device)
        self.size = np.zeros(num_tasks, np.int64)

    def clear(self, task: int) -> None:
        self.size[task] = 0

    def add(self, task: int, values: torch.Tensor) -> None:
        if not len(self.data):
            self.data = torch.zeros((self.num_tasks * self.capacity, self.width),
                                    device=self.device)
        start, n = int(self.size[task]), len(values)
        if start + n > self.capacity:
            raise RuntimeError(f"encoder buffer of task {task} overflows ({start} + {n} > "
                               f"{self.capacity})")
        begin = task * self.capacity + start
        self.data[begin:begin + n] = values.to(self.device)
        self.size[task] = start + n

    def sample(self, task: int, count: int, rng: np.random.Generator) -> torch.Tensor:
        """[count, width]: uniform draws with replacement from the task's buffer."""
        rows = task * self.capacity + rng.integers(0, self.size[task], count)
        return self.data[torch.from_numpy(rows).to(self.device)]

    def state_dict(self) -> dict[str, Any]:
        kept = [self.data[t * self.capacity:t * self.capacity + self.size[t]]
                for t in range(self.num_tasks)] if len(self.data) else []
        return {"size": self.size.copy(), "capacity": self.capacity,
                "data": torch.cat(kept).cpu() if kept else torch.zeros((0, self.width))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        size = np.asarray(state["size"], np.int64)
        if len(size) != self.num_tasks or size.max(initial=0) > self.capacity:
            raise ValueError("encoder buffers of another shape")
        self.data = torch.zeros((0, self.width), device=self.device)
        self.size = np.zeros(self.num_tasks, np.int64)
        data, start = state["data"], 0
        for task in range(self.num_tasks):
            if size[task]:
                self.add(task, data[start:start + size[task]].to(torch.float32))
            start += size[task]
