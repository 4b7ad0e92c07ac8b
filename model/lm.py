"""The whole fedurl language model in one file: a tiny GRU next-token LM over URL pieces.

A GRU, like Gboard's CIFG LM (Hard et al., "Federated Learning for Mobile Keyboard
Prediction", 2018), because its per-keystroke cost is one cell step with a carried hidden
state: no attention cache to ship to the browser. The cell is written out with two Linear
layers (gates in PyTorch's nn.GRU order r, z, n; Cho et al. 2014 with the reset gate applied
after the hidden projection) so that tracing it to ONNX yields plain MatMul/Sigmoid/Tanh ops.

The module itself only defines the network; ``model.graphs`` builds the two exported graphs
(one decoding step, one training step) from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LMConfig:
    """Every hyperparameter of the network and of its exported training step."""

    vocab_size: int = 512   # sentencepiece pieces, incl. 4 specials and 256 byte-fallback pieces
    n_embd: int = 128       # token embedding width
    n_hidden: int = 256     # GRU state width
    n_layer: int = 1        # stacked GRU layers
    pad_id: int = 0         # target id ignored by the loss (mask is 0 there as well)
    bos_id: int = 2         # every URL starts with BOS, so an empty prefix still has context
    eos_id: int = 3         # predicted after the last piece: "the URL ends here"
    seq_len: int = 64       # fixed time steps of the training graph (BOS + pieces, truncated)
    batch_size: int = 16    # fixed rows of the training graph; short batches are padded
    clip_norm: float = 1.0  # global gradient-norm clip inside the training step

    def to_dict(self) -> dict:
        """Plain dict for the bundle manifest, so a bundle rebuilds the model from itself."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> LMConfig:
        """Inverse of to_dict; unknown keys are an error, not silently dropped."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        assert not unknown, f"unknown LMConfig keys: {sorted(unknown)}"
        return cls(**values)


class GRUCell(nn.Module):
    """One GRU step: h' = (1 - z) * n + z * h."""

    def __init__(self, n_in: int, n_hidden: int):
        super().__init__()
        self.input_proj = nn.Linear(n_in, 3 * n_hidden)
        self.hidden_proj = nn.Linear(n_hidden, 3 * n_hidden)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Input x (B, n_in) and state h (B, H) -> the next state (B, H)."""
        return self.recur(self.input_proj(x), h)

    def recur(self, gi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The step given its input projection gi (B, 3H): what stays in a time loop.

        ``forward`` of a whole sequence projects every time step's input in one product
        beforehand (one (B*T) x E matrix, not T of B rows), so only ``hidden_proj`` recurs.
        """
        gh = self.hidden_proj(h)  # (B, 3H)
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h


class URLLanguageModel(nn.Module):
    """Embedding -> stacked GRU cells -> linear head over the piece vocabulary."""

    def __init__(self, config: LMConfig):
        super().__init__()
        assert config.n_layer >= 1, "need at least one GRU layer"
        assert 0 <= min(config.pad_id, config.bos_id, config.eos_id) and max(
            config.pad_id, config.bos_id, config.eos_id) < config.vocab_size, "special ids outside vocab"
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.cells = nn.ModuleList(
            GRUCell(config.n_embd if i == 0 else config.n_hidden, config.n_hidden)
            for i in range(config.n_layer))
        self.head = nn.Linear(config.n_hidden, config.vocab_size)

    def state_layout(self) -> dict:
        """The state ``step`` carries, as the manifest tells every completer.

        Its shape with the symbolic "batch" dimension at ``batch_axis``, its dtype and initial value.
        """
        return {"shape": [self.config.n_layer, "batch", self.config.n_hidden], "batch_axis": 1,
                "dtype": "float32", "init": "zeros"}

    def initial_state(self, batch: int) -> torch.Tensor:
        """Zero hidden state, (L, B, H): what ``state_layout`` promises."""
        return torch.zeros(self.config.n_layer, batch, self.config.n_hidden)

    def step(self, tokens: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoding step: tokens (B,) and state (L, B, H) -> log-probs (B, V), new state."""
        x = self.embed(tokens)  # (B, E)
        new_state = []
        for layer, cell in enumerate(self.cells):
            x = cell(x, state[layer])  # (B, H)
            new_state.append(x)
        return F.log_softmax(self.head(x), dim=-1), torch.stack(new_state)

    def forward(self, tokens: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits for tokens (B, T) -> (B, T, V); the time loop is unrolled."""
        state = self.initial_state(tokens.shape[0]) if state is None else state
        x = self.embed(tokens)  # (B, T, E)
        for layer, cell in enumerate(self.cells):
            h, outputs = state[layer], []
            # unbind, not x[:, t]: its backward is a stack, not T zero-filled scatters
            for gi_t in cell.input_proj(x).unbind(1):  # (B, T, 3H) in one product
                h = cell.recur(gi_t, h)
                outputs.append(h)
            x = torch.stack(outputs, dim=1)  # (B, T, H)
        return self.head(x)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL over positions where mask is 1; exactly 0 for an all-padding batch."""
    log_probs = F.log_softmax(logits, dim=-1)  # (B, T, V), stable even for large logits
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (nll * mask).sum() / mask.sum().clamp(min=1.0)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters())
