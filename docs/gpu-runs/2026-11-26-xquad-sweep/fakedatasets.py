"""Exploration only: a stand-in for datasets.load_from_disk on the GPU box (no datasets there).
Reads the column dicts that export.py wrote from the real features."""
import torch


class Table:
    def __init__(self, columns, fingerprint):
        self.columns, self._fingerprint = columns, fingerprint

    @property
    def column_names(self):
        return list(self.columns)

    def __len__(self):
        return len(next(iter(self.columns.values())))

    def select_columns(self, names):
        return Table({n: self.columns[n] for n in names}, self._fingerprint)

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.columns[key]
        if isinstance(key, slice):
            return {n: v[key] for n, v in self.columns.items()}
        if isinstance(key, list):
            return {n: [v[i] for i in key] for n, v in self.columns.items()}
        return {n: v[key] for n, v in self.columns.items()}

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def load_from_disk(path):
    columns, fingerprint = torch.load(str(path) + ".pt")
    return Table(columns, fingerprint)
