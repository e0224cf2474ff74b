"""Distributions with exact answers, usable as masked LMs: the ground truth every test checks against.

Each oracle is an ``nn.Module`` whose ``forward(input_ids)`` takes a canvas of data tokens ``0..V-1``
and mask tokens (id ``V``) and returns ``.logits`` = log of the exact conditional law of every position
given the visible ones. :class:`TabularOracle` (an explicit law over ``V^N``, small ``N``) additionally
computes the entropy profile, the model's CE profile and the exact output law of the random-order
factorized sampler, hence exact KL. :class:`MarkovChainOracle` has exact conditionals for any length
(forward-backward) and Monte Carlo profiles with standard errors.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import MaskedLMOutput

from .schedules import Schedule

__all__ = ["Oracle", "TabularOracle", "MarkovChainOracle", "MiscalibratedOracle"]

_LOG_FLOOR = -80.0  # log of an impossible token: finite, so logits never contain -inf


class Oracle(nn.Module):
    """Base class: a law over ``V^N`` exposed through the masked-LM call signature.

    Subclasses implement :meth:`conditionals`. The mask id is ``V``; its logit is the finite
    ``mask_logit`` so a sampler that forgets to suppress the mask token will sample it.
    """

    def __init__(self, vocab_size: int, n_tokens: int, mask_logit: float = 0.0) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if n_tokens < 1:
            raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
        self.vocab_size = int(vocab_size)
        self.n_tokens = int(n_tokens)
        self.mask_token_id = int(vocab_size)
        self.mask_logit = float(mask_logit)
        self.config = SimpleNamespace(vocab_size=self.vocab_size + 1, mask_token_id=self.mask_token_id,
                                      max_position_embeddings=self.n_tokens, model_type="mdm_sched_oracle")
        # a parameter-free module still needs a device anchor for `.to()`
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    # -- to be provided by subclasses ------------------------------------------------------------
    def conditionals(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Exact ``p(x_j = v | x_visible)`` for every row and position, float64 ``[B, N, V]``.

        ``x`` holds data tokens at visible positions (anything in ``0..V-1`` elsewhere).
        """
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples, LongTensor ``[n, N]``."""
        raise NotImplementedError

    # -- the masked-LM interface -----------------------------------------------------------------
    def _split_canvas(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if input_ids.ndim != 2 or input_ids.shape[1] != self.n_tokens:
            raise ValueError(f"input_ids must have shape [batch, {self.n_tokens}] for this oracle, "
                             f"got {tuple(input_ids.shape)}")
        if (input_ids < 0).any() or (input_ids > self.mask_token_id).any():
            raise ValueError(f"input_ids must hold data tokens 0..{self.vocab_size - 1} or the mask id {self.mask_token_id}")
        visible = input_ids != self.mask_token_id
        return input_ids.clamp(max=self.vocab_size - 1).cpu(), visible.cpu()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **_: object) -> MaskedLMOutput:
        x, visible = self._split_canvas(input_ids)
        probs = self.conditionals(x, visible)
        logp = probs.log().clamp(min=_LOG_FLOOR)
        mask_col = torch.full(logp.shape[:-1] + (1,), self.mask_logit, dtype=logp.dtype)
        logits = torch.cat([logp, mask_col], dim=-1).float().to(input_ids.device)
        return MaskedLMOutput(logits=logits)

    def miscalibrated(self, temperature: float = 1.5, noise: float = 0.0, seed: int = 0) -> MiscalibratedOracle:
        """A model with deliberately wrong conditionals (learning error): ``p^(1/temperature) * exp(noise * z)``."""
        return MiscalibratedOracle(self, temperature=temperature, noise=noise, seed=seed)


class MiscalibratedOracle(Oracle):
    """Wrong conditionals of a base oracle: tempered and perturbed by a fixed per-(position, token) noise.

    The result is generally not the set of conditionals of any joint law, which is exactly the kind of
    learning error a trained network makes.
    """

    def __init__(self, base: Oracle, temperature: float = 1.5, noise: float = 0.0, seed: int = 0) -> None:
        super().__init__(base.vocab_size, base.n_tokens, base.mask_logit)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.base = base
        self.temperature = float(temperature)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("noise", noise * torch.randn(base.n_tokens, base.vocab_size, generator=g,
                                                          dtype=torch.float64), persistent=False)

    def conditionals(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        p = self.base.conditionals(x, visible)
        logits = p.clamp_min(1e-300).log() / self.temperature + self.noise.cpu()
        out = torch.softmax(logits, dim=-1)
        # a visible position is known: keep it a delta so only masked positions carry error
        delta = torch.nn.functional.one_hot(x, self.vocab_size).double()
        return torch.where(visible.unsqueeze(-1), delta, out)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError("a miscalibrated oracle has no joint law to sample from; sample the base oracle")


# ------------------------------------------------------------------------------------------------
# Tabular laws (small N): everything exact by enumeration
# ------------------------------------------------------------------------------------------------

def _bits(mask: int, n: int) -> list[int]:
    return [j for j in range(n) if mask >> j & 1]


class TabularOracle(Oracle):
    """An explicit law ``pi`` over ``V^N`` (small ``N``): exact conditionals, profiles, sampler law and KL.

    Sequences are indexed row-major: index ``sum_j x_j V^(N-1-j)``.
    """

    MAX_STATES = 200_000

    def __init__(self, probs: torch.Tensor | np.ndarray, vocab_size: int | None = None,
                 n_tokens: int | None = None, mask_logit: float = 0.0) -> None:
        p = torch.as_tensor(probs, dtype=torch.float64)
        if p.ndim > 1:
            vocab_size, n_tokens = p.shape[0], p.ndim
            if any(s != vocab_size for s in p.shape):
                raise ValueError(f"probs must have shape [V]*N, got {tuple(p.shape)}")
        elif vocab_size is None or n_tokens is None:
            raise ValueError("flat probs need vocab_size= and n_tokens=")
        if p.numel() != vocab_size ** n_tokens:
            raise ValueError(f"probs has {p.numel()} entries, expected vocab_size**n_tokens = {vocab_size ** n_tokens}")
        if p.numel() > self.MAX_STATES:
            raise ValueError(f"V^N = {p.numel()} states is too many for exact enumeration (max {self.MAX_STATES}); "
                             "use MarkovChainOracle for long sequences")
        if not torch.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
            raise ValueError("probs must be finite, non-negative and not all zero")
        super().__init__(vocab_size, n_tokens, mask_logit)
        self.register_buffer("probs", (p / p.sum()).reshape(-1), persistent=False)
        self._marginals: dict[int, torch.Tensor] = {}

    @classmethod
    def random(cls, vocab_size: int = 3, n_tokens: int = 4, concentration: float = 0.5, seed: int = 0,
               **kwargs: object) -> TabularOracle:
        """A random law drawn from a symmetric Dirichlet (small concentration = strong correlations)."""
        g = torch.Generator().manual_seed(seed)
        gam = torch._standard_gamma(torch.full((vocab_size ** n_tokens,), float(concentration), dtype=torch.float64),
                                    generator=g)
        return cls(gam.clamp_min(1e-12), vocab_size=vocab_size, n_tokens=n_tokens, **kwargs)

    # -- enumeration helpers ---------------------------------------------------------------------
    def all_sequences(self) -> torch.Tensor:
        """Every sequence of ``V^N`` in index order, LongTensor ``[V^N, N]``."""
        v, n = self.vocab_size, self.n_tokens
        idx = torch.arange(v ** n)
        powers = v ** torch.arange(n - 1, -1, -1)
        return (idx.unsqueeze(1) // powers) % v

    def index_of(self, x: torch.Tensor) -> torch.Tensor:
        """Flat index of each sequence in ``x`` ``[B, N]``."""
        powers = self.vocab_size ** torch.arange(self.n_tokens - 1, -1, -1, device=x.device)
        return (x.long() * powers).sum(-1)

    def _marginal(self, subset: int) -> torch.Tensor:
        """Marginal of the positions in bitmask ``subset`` as a tensor with one dim per position (ascending)."""
        if subset not in self._marginals:
            table = self.probs.reshape([self.vocab_size] * self.n_tokens)
            drop = [j for j in range(self.n_tokens) if not subset >> j & 1]
            self._marginals[subset] = table.sum(dim=drop) if drop else table
        return self._marginals[subset]

    def conditionals(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        n, v = self.n_tokens, self.vocab_size
        x, visible = x.cpu(), visible.cpu()
        out = torch.nn.functional.one_hot(x, v).double()
        weights = 1 << torch.arange(n)
        codes = (visible.long() * weights).sum(-1)
        for code in codes.unique().tolist():  # one marginalisation per distinct visible set
            rows = (codes == code).nonzero().squeeze(1)
            vis = _bits(code, n)
            xs = x[rows]
            for j in range(n):
                if code >> j & 1:
                    continue
                joint = self._marginal(code | 1 << j)
                dims = sorted(vis + [j])
                joint = joint.movedim(dims.index(j), -1)  # target position last: index the rest, keep [rows, V]
                cond = joint[tuple(xs[:, d] for d in vis)] if vis else joint.expand(len(rows), v)
                total = cond.sum(-1, keepdim=True)
                out[rows, j] = torch.where(total > 0, cond / total.clamp_min(1e-300), torch.full_like(cond, 1.0 / v))
        return out

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = torch.multinomial(self.probs.cpu(), n, replacement=True, generator=generator)
        return self.all_sequences()[idx]

    # -- exact information quantities ------------------------------------------------------------
    def entropy(self) -> float:
        """``H(pi)`` in nats."""
        p = self.probs[self.probs > 0]
        return float(-(p * p.log()).sum())

    def _subset_entropy(self, subset: int) -> float:
        if subset == 0:
            return 0.0
        p = self._marginal(subset).reshape(-1)
        p = p[p > 0]
        return float(-(p * p.log()).sum())

    def entropy_profile(self) -> np.ndarray:
        """Exact ``g(i) = E H(X_J | X_A)`` for ``i = 0..N-1`` (uniform ``i``-subset ``A``, uniform ``J`` outside)."""
        n = self.n_tokens
        h = [self._subset_entropy(s) for s in range(1 << n)]
        g = np.zeros(n)
        for s in range(1 << n):
            i = bin(s).count("1")
            if i == n:
                continue
            g[i] += sum(h[s | 1 << j] - h[s] for j in range(n) if not s >> j & 1)
        for i in range(n):
            g[i] /= math.comb(n, i) * (n - i)
        return g

    def _logp_given(self, model: Oracle, subset: int, xs: torch.Tensor) -> torch.Tensor:
        """``log p_model(x_j | x_subset)`` for every sequence in ``xs`` and every position, ``[S, N]``."""
        visible = torch.zeros(xs.shape, dtype=torch.bool)
        visible[:, _bits(subset, self.n_tokens)] = True
        probs = model.conditionals(xs, visible)
        return probs.gather(-1, xs.unsqueeze(-1)).squeeze(-1).clamp_min(1e-300).log()

    def ce_profile(self, model: Oracle | None = None) -> np.ndarray:
        """Exact ``CE(i) = E_{x~pi} E_{A,J} [-log p_model(x_J | x_A)]``; equals :meth:`entropy_profile` for ``model=None``."""
        model = self if model is None else model
        n = self.n_tokens
        xs = self.all_sequences()
        ce = np.zeros(n)
        for s in range(1 << n):
            i = bin(s).count("1")
            if i == n:
                continue
            logp = self._logp_given(model, s, xs)  # [S, N]
            masked = [j for j in range(n) if not s >> j & 1]
            ce[i] -= float((self.probs.unsqueeze(1) * logp[:, masked]).sum())
        for i in range(n):
            ce[i] /= math.comb(n, i) * (n - i)
        return ce

    def sampler_law(self, schedule: Schedule | Sequence[int], model: Oracle | None = None) -> torch.Tensor:
        """Exact output law ``q`` of the random-order factorized sampler with ``schedule``, over all ``V^N`` sequences.

        Dynamic program over visible sets: ``Q_t(A')`` sums the path weights of every way of reaching
        the visible set ``A'`` after ``t`` calls (each ``k_t``-subset of the masked positions is equally likely).
        """
        model = self if model is None else model
        sched = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
        n = self.n_tokens
        if sched.n_tokens != n:
            raise ValueError(f"schedule reveals {sched.n_tokens} tokens but the oracle has n_tokens={n}")
        xs = self.all_sequences()
        q = {0: torch.ones(xs.shape[0], dtype=torch.float64)}
        for k, before in zip(sched.sizes, sched.cumulative[:-1]):
            nxt: dict[int, torch.Tensor] = {}
            norm = math.comb(n - before, k)
            for subset, weight in q.items():
                logp = self._logp_given(model, subset, xs)
                masked = [j for j in range(n) if not subset >> j & 1]
                for reveal in itertools.combinations(masked, k):
                    new = subset | sum(1 << j for j in reveal)
                    term = weight * logp[:, list(reveal)].sum(-1).exp() / norm
                    nxt[new] = nxt[new] + term if new in nxt else term
            q = nxt
        return q[(1 << n) - 1]

    def _ordered_walk(self, model: Oracle, sizes: Sequence[int], order: str
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Every sequence's own path under the deterministic ordered sampler (:mod:`mdm_sched.policy`): the
        log-probability of producing it with call sizes ``sizes``, and per call the true tokens' losses in rank
        order at the state (``[S, N - K]``)."""
        from .policy import position_scores

        n, v = self.n_tokens, self.vocab_size
        xs = self.all_sequences()
        visible = torch.zeros(xs.shape, dtype=torch.bool)
        logq = torch.zeros(xs.shape[0], dtype=torch.float64)
        ranked = []
        for k in sizes:
            logp = model.conditionals(xs, visible).clamp_min(1e-300).log()  # [S, N, V]
            score = position_scores(logp.reshape(-1, v), order).view(-1, n).masked_fill(visible, float("-inf"))
            rank = score.argsort(dim=1, descending=True, stable=True)[:, :n - int(visible[0].sum())]
            loss = -logp.gather(-1, xs.unsqueeze(-1)).squeeze(-1).gather(1, rank)
            ranked.append(loss)
            logq -= loss[:, :k].sum(1)
            visible = visible.scatter(1, rank[:, :k], True)
        return logq, ranked

    def ordered_sampler_law(self, schedule: Schedule | Sequence[int], order: str = "confidence",
                            model: Oracle | None = None) -> torch.Tensor:
        """Exact output law of the deterministic ordered sampler (``order``: confidence = max probability,
        margin, entropy; :mod:`mdm_sched.policy`) with ``schedule``, over all ``V^N`` sequences.

        Each sequence determines its own path (the selection is a function of the visible tokens), so its
        probability is the product of the model's conditionals along that path; the law sums to 1.
        """
        sched = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
        if sched.n_tokens != self.n_tokens:
            raise ValueError(f"schedule reveals {sched.n_tokens} tokens but the oracle has n_tokens={self.n_tokens}")
        return self._ordered_walk(self if model is None else model, sched.sizes, order)[0].exp()

    def ordered_kl(self, schedule: Schedule | Sequence[int], order: str = "confidence",
                   model: Oracle | None = None) -> float:
        """Exact ``KL(pi || q)`` in nats for the deterministic ordered sampler's law ``q``."""
        q = self.ordered_sampler_law(schedule, order, model)
        p = self.probs
        m = p > 0
        return float((p[m] * (p[m].log() - q[m].clamp_min(1e-300).log())).sum())

    def policy_table(self, order: str = "confidence", model: Oracle | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``CE_r(K)`` and its standard deviation over ``x ~ pi``, ``[N, N]`` each (NaN past rank ``N - K``):
        the loss of the ``r``-th ranked position along the one-token-per-call teacher-forced path."""
        n = self.n_tokens
        _, ranked = self._ordered_walk(self if model is None else model, [1] * n, order)
        mean, sd = np.full((n, n), np.nan), np.full((n, n), np.nan)
        w = self.probs.unsqueeze(1)
        for k, loss in enumerate(ranked):
            m1 = (w * loss).sum(0)
            m2 = (w * loss ** 2).sum(0)
            mean[k, :n - k] = m1.numpy()
            sd[k, :n - k] = (m2 - m1 ** 2).clamp_min(0).sqrt().numpy()
        return mean, sd

    def kl(self, schedule: Schedule | Sequence[int], model: Oracle | None = None) -> float:
        """Exact ``KL(pi || q)`` in nats between the data law and the sampler's output law."""
        q = self.sampler_law(schedule, model)
        p = self.probs
        m = p > 0
        return float((p[m] * (p[m].log() - q[m].clamp_min(1e-300).log())).sum())


# ------------------------------------------------------------------------------------------------
# Markov chains (any length): exact conditionals by forward-backward
# ------------------------------------------------------------------------------------------------

class MarkovChainOracle(Oracle):
    """A homogeneous Markov chain ``x_1 ~ initial``, ``x_{t+1} ~ transition[x_t]`` of any length."""

    def __init__(self, initial: torch.Tensor | np.ndarray, transition: torch.Tensor | np.ndarray, n_tokens: int,
                 mask_logit: float = 0.0) -> None:
        init = torch.as_tensor(initial, dtype=torch.float64)
        trans = torch.as_tensor(transition, dtype=torch.float64)
        v = init.numel()
        if init.ndim != 1 or trans.shape != (v, v):
            raise ValueError(f"initial must be [V] and transition [V, V], got {tuple(init.shape)} and {tuple(trans.shape)}")
        if (init < 0).any() or (trans < 0).any() or not torch.isfinite(trans).all():
            raise ValueError("initial and transition must be finite and non-negative")
        if (trans.sum(1) <= 0).any() or init.sum() <= 0:
            raise ValueError("every row of transition and the initial law need positive mass")
        super().__init__(v, n_tokens, mask_logit)
        self.register_buffer("initial", init / init.sum(), persistent=False)
        self.register_buffer("transition", trans / trans.sum(1, keepdim=True), persistent=False)

    @classmethod
    def random(cls, vocab_size: int = 4, n_tokens: int = 32, stickiness: float = 0.0, concentration: float = 0.3,
               seed: int = 0, **kwargs: object) -> MarkovChainOracle:
        """Random chain; ``stickiness`` adds that much mass on staying in the same state (slow mixing)."""
        g = torch.Generator().manual_seed(seed)
        conc = torch.full((vocab_size, vocab_size), float(concentration), dtype=torch.float64)
        trans = torch._standard_gamma(conc, generator=g).clamp_min(1e-9)
        trans = trans / trans.sum(1, keepdim=True) * (1 - stickiness) + stickiness * torch.eye(vocab_size, dtype=torch.float64)
        return cls(torch.full((vocab_size,), 1.0 / vocab_size), trans, n_tokens, **kwargs)

    def conditionals(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        x, visible = x.cpu(), visible.cpu()
        b, n, v = x.shape[0], self.n_tokens, self.vocab_size
        evidence = torch.where(visible.unsqueeze(-1), torch.nn.functional.one_hot(x, v).double(),
                               torch.ones(b, n, v, dtype=torch.float64))
        trans = self.transition.cpu()
        # scaled forward (alpha excludes the evidence at its own position) and backward messages
        alpha = torch.empty(b, n, v, dtype=torch.float64)
        a = self.initial.cpu().expand(b, v)
        for t in range(n):
            alpha[:, t] = a
            a = (a * evidence[:, t]) @ trans
            a = a / a.sum(-1, keepdim=True).clamp_min(1e-300)
        beta = torch.empty(b, n, v, dtype=torch.float64)
        bt = torch.ones(b, v, dtype=torch.float64)
        for t in range(n - 1, -1, -1):
            beta[:, t] = bt
            bt = (evidence[:, t] * bt) @ trans.T
            bt = bt / bt.sum(-1, keepdim=True).clamp_min(1e-300)
        post = alpha * beta
        post = post / post.sum(-1, keepdim=True).clamp_min(1e-300)
        return torch.where(visible.unsqueeze(-1), evidence, post)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        out = torch.empty(n, self.n_tokens, dtype=torch.long)
        out[:, 0] = torch.multinomial(self.initial.cpu().expand(n, -1), 1, generator=generator).squeeze(1)
        trans = self.transition.cpu()
        for t in range(1, self.n_tokens):
            out[:, t] = torch.multinomial(trans[out[:, t - 1]], 1, generator=generator).squeeze(1)
        return out

    def to_tabular(self) -> TabularOracle:
        """The same law as an explicit table (small ``V^N`` only)."""
        v, n = self.vocab_size, self.n_tokens
        if v ** n > TabularOracle.MAX_STATES:
            raise ValueError(f"V^N = {v ** n} is too large to tabulate; use the Monte Carlo profiles")
        tab = TabularOracle(torch.ones(v ** n), vocab_size=v, n_tokens=n, mask_logit=self.mask_logit)
        xs = tab.all_sequences()
        trans = self.transition.cpu()
        logp = self.initial.cpu()[xs[:, 0]].log() + trans[xs[:, :-1], xs[:, 1:]].log().sum(-1)
        return TabularOracle(logp.exp(), vocab_size=v, n_tokens=n, mask_logit=self.mask_logit)

    def entropy_profile(self, levels: Sequence[int] | None = None, n_samples: int = 2000,
                        generator: torch.Generator | None = None, model: Oracle | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Monte Carlo ``g(i)`` (or the CE profile of ``model``) with standard errors.

        For each level ``i``: ``x ~ pi``, a uniform ``i``-subset ``A`` and every position outside it;
        the inner expectation over ``X_J`` is exact (forward-backward), so only ``x`` and ``A`` are sampled.
        Returns ``(levels, mean, standard_error)``.
        """
        n = self.n_tokens
        levels = np.arange(n) if levels is None else np.asarray(levels, dtype=np.int64)
        if levels.size == 0 or levels.min() < 0 or levels.max() >= n:
            raise ValueError(f"levels must lie in 0..{n - 1}")
        means, ses = np.zeros(levels.size), np.zeros(levels.size)
        for li, i in enumerate(levels.tolist()):
            x = self.sample(n_samples, generator)
            ranks = torch.rand(n_samples, n, generator=generator).argsort(-1).argsort(-1)
            visible = ranks < i
            if model is None:
                p = self.conditionals(x, visible)
                per_pos = -(p * p.clamp_min(1e-300).log()).sum(-1)  # exact H(X_j | x_A)
            else:
                p = model.conditionals(x, visible)
                per_pos = -p.gather(-1, x.unsqueeze(-1)).squeeze(-1).clamp_min(1e-300).log()
            per_row = (per_pos * ~visible).sum(-1) / (n - i)
            means[li] = float(per_row.mean())
            ses[li] = float(per_row.std(unbiased=True) / math.sqrt(n_samples)) if n_samples > 1 else float("nan")
        return levels, means, ses
