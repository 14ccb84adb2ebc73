r"""Jitted denoising-score-matching training with optax, EMA, progress and exact resumption.

:class:`DSMTrainer` holds the static configuration (network, schedule, optimizer, weighting, ...)
and one jitted function that runs a *chunk* of ``steps_per_call`` optimizer steps inside a
``lax.scan``. All state lives in a :class:`TrainState` pytree (step, params, EMA params, optimizer
state, base key). Determinism: step ``i`` uses the key ``fold_in(state.key, i)`` for its batch,
times, noise and condition dropout, so the trajectory depends only on the initial key, the data and
the configuration. A chunk always has the same length (steps beyond the requested count are
masked out with a select), so there is a single compiled program, and training ``N`` steps
straight is *bit-identical* to training ``N/2``, saving, restoring in a fresh trainer and training
``N/2`` more, whatever the split point.

Data: a :class:`~composition_jax.distributions.Distribution` (fresh exact samples every step), an
array ``(N, d)`` (minibatches drawn with replacement), or a tuple ``(x (N, d), labels (N,))`` for a
conditional network (labels in ``[0, C)``; each label is replaced by the NULL index ``C`` with
probability ``p_uncond``, so the network also learns the unconditional score).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._pytree import pytree_dataclass, replace
from ..distributions.base import Distribution
from ..nn.model import PARAMETERIZATIONS, ScoreNetModel, _check_network, init_params
from ..nn.nnx_networks import NNXNetwork
from ..schedules import Schedule
from .checkpoint import CheckpointError, CheckpointWriter, load_checkpoint, save_checkpoint
from .dsm import TIME_SAMPLINGS, WEIGHTINGS, dsm_loss_per_example, sample_times

__all__ = ["DSMTrainer", "TrainState"]


@pytree_dataclass
class TrainState:
    """Everything needed to continue training exactly.

    Attributes:
      step: int32 scalar, number of optimizer steps taken.
      params: network parameters.
      ema_params: exponential moving average of ``params``.
      opt_state: optax state.
      key: base PRNG key of the data/noise stream (step ``i`` uses ``fold_in(key, i)``).
    """

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    key: jax.Array


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="dsm", unit="step")
    except ImportError:  # pragma: no cover - tqdm is optional
        return None


def _describe(obj: Any) -> Any:
    """JSON description of a configuration value: numbers, strings and lists as themselves, arrays
    as nested lists, dataclasses (schedules, flax modules) as ``{"type": name, field: value, ...}``
    in field order, functions by qualified name."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_describe(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _describe(v) for k, v in obj.items()}
    if isinstance(obj, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(obj).tolist()
    if isinstance(obj, NNXNetwork):  # an NNX module: its class and constructor arguments
        return obj.describe()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {"type": type(obj).__name__}
        for f in dataclasses.fields(obj):
            if f.name in ("parent", "name"):  # flax module bookkeeping, not configuration
                continue
            out[f.name] = _describe(getattr(obj, f.name))
        return out
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    return repr(obj)


def _fmt(desc: Any) -> str:
    """A described value in words: ``VPSchedule(beta_min=0.1, beta_max=20.0, t_max=1.0)``."""
    if isinstance(desc, dict) and "type" in desc:
        body = ", ".join(f"{k}={_fmt(v)}" for k, v in desc.items() if k != "type")
        return f"{desc['type']}({body})"
    if isinstance(desc, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in desc.items()) + "}"
    if isinstance(desc, list):
        return "(" + ", ".join(_fmt(v) for v in desc) + ("," if len(desc) == 1 else "") + ")"
    if isinstance(desc, float) and np.isfinite(desc) and float(np.float32(desc)) == desc:
        return str(np.float32(desc))  # a float32 parameter: its shortest float32 form
    return repr(desc)


def _same(a: Any, b: Any) -> bool:
    """Equal descriptions; numbers agree to float32 rounding (relative 1e-6), so a schedule
    built under float32 matches the same schedule built under float64."""
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return a == b or math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# what the parameters mean: always checked on restore
_MODEL_KEYS = ("schedule", "parameterization", "network", "dtype")
# how training proceeds: checked by ``restore(strict=True)`` (steps_per_call is left out: it does
# not change the trajectory)
_TRAINING_KEYS = ("weighting", "time_sampling", "importance_weight", "t_min", "t_max",
                  "batch_size", "ema_decay", "ema_warmup", "p_uncond")


class DSMTrainer:
    r"""Denoising score matching trainer.

    Args:
      network: a score network: a flax NNX module (``NNXMLPScoreNet``, ``NNXUNetScoreNet``, or
        any ``nnx.Module`` accepted by ``ScoreNetModel.from_nnx``), whose current parameters
        are the initial parameters of :meth:`init` (``nnx.split``: the graph definition is
        static, the ``nnx.Param`` state is what optax trains); or a linen module
        (``MLPScoreNet``, ``UNetScoreNet``), initialised by :meth:`init` from its key.
      schedule: the noise schedule.
      optimizer: an optax ``GradientTransformation`` (default ``optax.adam(1e-3)``).
      parameterization: network output meaning, ``"eps"``, ``"score"`` or ``"x0"``.
      weighting: ``"eps"`` (``lambda = sigma^2``), ``"score"`` (``lambda = 1``) or ``"x0"``; see
        :mod:`composition_jax.training.dsm`.
      time_sampling: ``"uniform"``, ``"stratified"`` or ``"log_snr"``.
      importance_weight: reweight log-SNR draws to the uniform-``t`` objective.
      t_min, t_max: training time range (``t_max`` defaults to ``schedule.t_max``).
      batch_size: examples per step.
      steps_per_call: optimizer steps fused in one jitted call (``lax.scan``).
      ema_decay: EMA decay; with ``ema_warmup`` the decay used at step ``i`` is
        ``min(ema_decay, (1 + i) / (10 + i))``.
      p_uncond: probability of replacing a label by NULL (conditional networks only).
      dtype: float dtype of parameters and batches.

    Example:
      >>> import jax, jax.numpy as jnp, composition_jax as cj
      >>> net = cj.nn.MLPScoreNet(dim=2, hidden=16, depth=1)
      >>> tr = cj.training.DSMTrainer(net, cj.VPSchedule(), batch_size=32, steps_per_call=10)
      >>> data = cj.Gaussian(jnp.zeros(2), jnp.eye(2))
      >>> state, losses = tr.train(tr.init(jax.random.key(0)), data, 20, progress=False)
      >>> losses.shape, int(state.step)
      ((20,), 20)

      The same with a flax NNX module; ``tr.model(state)`` is a model for ``cj.sample`` and
      ``tr.model(state).nnx_module()`` the trained module:

      >>> from flax import nnx
      >>> module = cj.nn.NNXMLPScoreNet(dim=2, hidden=16, depth=1, rngs=nnx.Rngs(0))
      >>> tr = cj.training.DSMTrainer(module, cj.VPSchedule(), batch_size=32, steps_per_call=10)
      >>> state, losses = tr.train(tr.init(jax.random.key(0)), data, 20, progress=False)
      >>> type(tr.model(state).nnx_module()).__name__
      'NNXMLPScoreNet'
    """

    def __init__(
        self,
        network: Any,
        schedule: Schedule,
        *,
        optimizer: optax.GradientTransformation | None = None,
        parameterization: str = "eps",
        weighting: str = "eps",
        time_sampling: str = "uniform",
        importance_weight: bool = False,
        t_min: float = 1e-3,
        t_max: float | None = None,
        batch_size: int = 256,
        steps_per_call: int = 100,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        p_uncond: float = 0.1,
        dtype: Any = jnp.float32,
    ):
        from flax import nnx

        self._nnx_params = None  # an NNX module's initial parameters (nnx.State)
        if isinstance(network, nnx.Module):
            network, self._nnx_params = NNXNetwork.split(network)
        elif isinstance(network, NNXNetwork):
            raise TypeError("pass the NNX module itself (its parameters are the initial ones), "
                            "not its NNXNetwork")
        _check_network(network)
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}"
            )
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")
        t_max = float(schedule.t_max) if t_max is None else float(t_max)
        if not (0.0 < float(t_min) < t_max <= float(schedule.t_max)):
            raise ValueError(
                f"need 0 < t_min < t_max <= schedule.t_max = {schedule.t_max}, "
                f"got t_min={t_min}, t_max={t_max}"
            )
        for name, v in (("batch_size", batch_size), ("steps_per_call", steps_per_call)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not (0.0 <= float(ema_decay) < 1.0):
            raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
        if not (0.0 <= float(p_uncond) <= 1.0):
            raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
        self.network = network
        self.schedule = schedule
        self.optimizer = optax.adam(1e-3) if optimizer is None else optimizer
        self.parameterization = parameterization
        self.weighting = weighting
        self.time_sampling = time_sampling
        self.importance_weight = bool(importance_weight)
        self.t_min, self.t_max = float(t_min), t_max
        self.batch_size = batch_size
        self.steps_per_call = steps_per_call
        self.ema_decay = float(ema_decay)
        self.ema_warmup = bool(ema_warmup)
        self.p_uncond = float(p_uncond)
        self.dtype = jnp.dtype(dtype)
        self.trace_count = 0  # number of times the training chunk was traced (compiled)
        self._chunk = jax.jit(self._chunk_impl)
        self._loss = jax.jit(self._loss_impl, static_argnames=("n",))

    # -- configuration ------------------------------------------------------------------------
    def config(self) -> dict:
        """JSON-serializable configuration (stored in checkpoint metadata, checked on restore).

        ``network`` and ``schedule`` are described field by field (``{"type": "VPSchedule",
        "beta_min": 0.1, ...}``); the optimizer is not described (its state's structure is
        checked leaf by leaf, its hyperparameters are not).
        """
        return {
            "network": _describe(self.network),
            "schedule": _describe(self.schedule),
            "parameterization": self.parameterization,
            "weighting": self.weighting,
            "time_sampling": self.time_sampling,
            "importance_weight": self.importance_weight,
            "t_min": self.t_min,
            "t_max": self.t_max,
            "batch_size": self.batch_size,
            "steps_per_call": self.steps_per_call,
            "ema_decay": self.ema_decay,
            "ema_warmup": self.ema_warmup,
            "p_uncond": self.p_uncond,
            "dtype": str(self.dtype),
        }

    # -- state ----------------------------------------------------------------------------------
    def init(self, key: jax.Array) -> TrainState:
        """Fresh state: EMA = parameters, step 0, data stream key ``split(key)[1]``. Parameters:
        for a linen network drawn from ``split(key)[0]``; for an NNX module its own (drawn by
        its ``rngs`` when it was constructed), so a linen network and the NNX module converted
        from its initial parameters (``nnx_from_linen``) train along the same trajectory."""
        kp, kd = jax.random.split(key)
        if self._nnx_params is not None:
            params = self._nnx_params
        else:
            params = init_params(self.network, kp, self.dtype)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            ema_params=params,
            opt_state=self.optimizer.init(params),
            key=kd,
        )

    def model(self, state: TrainState, *, ema: bool = True) -> ScoreNetModel:
        """The trained model (EMA parameters by default); for an NNX network
        ``.nnx_module()`` of it is the trained module."""
        params = state.ema_params if ema else state.params
        return ScoreNetModel(self.network, params, self.schedule, self.parameterization)

    # -- data ------------------------------------------------------------------------------------
    def _check_data(self, data: Any) -> Any:
        d = self.network.dim
        conditional = self.network.num_conditions is not None
        if isinstance(data, Distribution):
            if data.dim != d:
                raise ValueError(f"data has dim {data.dim}, the network has dim {d}")
            return data
        if isinstance(data, tuple):
            if len(data) != 2:
                raise ValueError(f"data tuple must be (x, labels), got length {len(data)}")
            if not conditional:
                raise ValueError("labelled data (x, labels) needs a conditional network")
            x, labels = jnp.asarray(data[0]), jnp.asarray(data[1])
            if x.ndim != 2 or x.shape[1] != d:
                raise ValueError(f"data x must have shape (N, {d}), got {tuple(x.shape)}")
            if labels.shape != (x.shape[0],) or not jnp.issubdtype(labels.dtype, jnp.integer):
                raise ValueError(
                    f"labels must be integers of shape ({x.shape[0]},), got {labels.dtype} "
                    f"{tuple(labels.shape)}"
                )
            lmin, lmax = int(labels.min()), int(labels.max())
            if lmin < 0 or lmax > self.network.num_conditions:
                raise ValueError(
                    f"labels must lie in [0, {self.network.num_conditions}] (the last = NULL), "
                    f"got range [{lmin}, {lmax}]"
                )
            return (x.astype(self.dtype), labels.astype(jnp.int32))
        x = jnp.asarray(data)
        if x.ndim != 2 or x.shape[1] != d or not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"data must be floating with shape (N, {d}), got {x.dtype} {x.shape}")
        return x.astype(self.dtype)

    def _batch(self, key, data):
        b = self.batch_size
        null = self.network.null_condition
        kx, kc = jax.random.split(key)
        if isinstance(data, Distribution):
            x0 = data.sample(kx, b).astype(self.dtype)
            cond = jnp.full((b,), null, jnp.int32)
        elif isinstance(data, tuple):
            idx = jax.random.randint(kx, (b,), 0, data[0].shape[0])
            x0, cond = data[0][idx], data[1][idx]
            drop = jax.random.bernoulli(kc, self.p_uncond, (b,))
            cond = jnp.where(drop, jnp.int32(null), cond)
        else:
            idx = jax.random.randint(kx, (b,), 0, data.shape[0])
            x0, cond = data[idx], jnp.full((b,), null, jnp.int32)
        return x0, cond

    def _batch_loss(self, params, key, data):
        kb, kt, ke = jax.random.split(key, 3)
        x0, cond = self._batch(kb, data)
        t, w = sample_times(
            kt, self.batch_size, self.schedule, self.t_min, self.t_max,
            self.time_sampling, self.importance_weight, self.dtype,
        )
        eps = jax.random.normal(ke, x0.shape, self.dtype)
        per = dsm_loss_per_example(
            params, self.network, self.schedule, self.parameterization, self.weighting,
            x0, t, eps, cond,
        )
        return jnp.mean(w * per)

    # -- jitted kernels -------------------------------------------------------------------------
    def _chunk_impl(self, state: TrainState, data: Any, n_active: jax.Array):
        self.trace_count += 1
        grad_fn = jax.value_and_grad(self._batch_loss)

        def body(st, i):
            k = jax.random.fold_in(st.key, st.step)
            loss, grads = grad_fn(st.params, k, data)
            # optax mixes Python floats with its int32 step count (bias corrections, schedules),
            # which strict dtype promotion rejects; its internals get the standard rules
            with jax.numpy_dtype_promotion("standard"):
                updates, opt_state = self.optimizer.update(grads, st.opt_state, st.params)
                params = optax.apply_updates(st.params, updates)
            decay = jnp.asarray(self.ema_decay, jnp.float32)
            if self.ema_warmup:
                s = st.step.astype(jnp.float32)
                decay = jnp.minimum(decay, (1.0 + s) / (10.0 + s))
            ema = jax.tree.map(
                lambda e, p: (decay.astype(e.dtype) * e + (1 - decay).astype(e.dtype) * p),
                st.ema_params, params,
            )
            active = i < n_active
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
            new = replace(
                st,
                step=jnp.where(active, st.step + 1, st.step),
                params=keep(params, st.params),
                ema_params=keep(ema, st.ema_params),
                opt_state=keep(opt_state, st.opt_state),
            )
            return new, jnp.where(active, loss, jnp.nan).astype(jnp.float32)

        return jax.lax.scan(body, state, jnp.arange(self.steps_per_call, dtype=jnp.int32))

    def _loss_impl(self, params, key, data, n):
        keys = jax.random.split(key, n)
        return jax.lax.map(lambda k: self._batch_loss(params, k, data), keys)

    # -- public loops ---------------------------------------------------------------------------
    def train(
        self,
        state: TrainState,
        data: Any,
        num_steps: int,
        *,
        progress: bool = True,
        checkpoint_path: str | None = None,
        checkpoint_every: int | None = None,
        checkpoint_keep: int | None = None,
    ) -> tuple[TrainState, np.ndarray]:
        """Run ``num_steps`` optimizer steps from ``state``.

        Args:
          state: from :meth:`init` or :meth:`restore`.
          data: a ``Distribution``, an array ``(N, d)`` or ``(x, labels)``.
          num_steps: number of steps (any non-negative int; chunks are padded by masking).
          progress: show a tqdm progress bar with the running loss when tqdm is installed.
          checkpoint_path: if given, an orbax checkpoint directory: the state is saved there (as
            a step of that directory, with the data's fingerprint, see :meth:`save`) every
            ``checkpoint_every`` steps (rounded up to whole chunks) and at the end. The saves
            are asynchronous (training continues while orbax writes, see
            :class:`~composition_jax.training.checkpoint.CheckpointWriter`); ``train`` returns
            once every step is committed.
          checkpoint_every: steps between checkpoints (``None``: only at the end).
          checkpoint_keep: keep only the newest ``checkpoint_keep`` steps (``None``: all).

        Returns:
          ``(state, losses)`` with the per-step minibatch losses as a NumPy array ``(num_steps,)``.
        """
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"num_steps must be a non-negative int, got {num_steps!r}")
        if not isinstance(state, TrainState):
            raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
        data = self._check_data(data)
        if checkpoint_path is None:
            return self._train(state, data, num_steps, progress, None, checkpoint_every)
        fp = self.data_fingerprint(data)
        with CheckpointWriter(checkpoint_path, max_to_keep=checkpoint_keep) as writer:
            def save(st):
                meta = {"step": int(st.step), "trainer": self.config(), "data": fp}
                writer.save(st, meta, step=int(st.step))

            return self._train(state, data, num_steps, progress, save, checkpoint_every)

    def _train(self, state, data, num_steps, progress, save, checkpoint_every):
        k = self.steps_per_call
        bar = _progress(num_steps, progress)
        losses, done, since_ckpt = [], 0, 0
        t0 = time.perf_counter()
        while done < num_steps:
            n = min(k, num_steps - done)
            state, chunk_losses = self._chunk(state, data, jnp.int32(n))
            chunk = np.asarray(chunk_losses)[:n]
            losses.append(chunk)
            done += n
            since_ckpt += n
            if bar is not None:
                bar.update(n)
                bar.set_postfix(loss=f"{float(np.mean(chunk)):.4g}")
            elif progress and (done == num_steps or done % (10 * k) == 0):
                rate = done * self.batch_size / (time.perf_counter() - t0)
                print(f"dsm step {int(state.step)} loss {float(np.mean(chunk)):.4g} "
                      f"({rate:.3g} examples/s)")
            if save is not None and checkpoint_every and since_ckpt >= checkpoint_every \
                    and done < num_steps:
                save(state)
                since_ckpt = 0
        if bar is not None:
            bar.close()
        if save is not None and num_steps > 0:
            save(state)
        out = np.concatenate(losses) if losses else np.zeros((0,), np.float32)
        return state, out

    def evaluate_loss(self, params: Any, key: jax.Array, data: Any, n_batches: int = 10):
        """The DSM objective on ``n_batches`` fresh minibatches: ``(n_batches,)`` losses."""
        return self._loss(params, key, self._check_data(data), n=int(n_batches))

    # -- checkpoints -----------------------------------------------------------------------------
    def data_fingerprint(self, data: Any) -> dict:
        """JSON identity of the training data, recorded by :meth:`save` and checked by
        :meth:`restore`: ``{"type": "array", "shape", "dtype", "sha256"}`` for an array (after the
        conversion to ``self.dtype``), ``{"type": "labelled", "x": ..., "labels": ...}`` for
        ``(x, labels)``, and for a ``Distribution`` its class name, dimension and the SHA-256 of its
        static structure and parameter arrays."""
        data = self._check_data(data)

        def arr(a):
            h = np.ascontiguousarray(np.asarray(a))
            return {"type": "array", "shape": list(h.shape), "dtype": str(h.dtype),
                    "sha256": hashlib.sha256(h.tobytes()).hexdigest()}

        if isinstance(data, Distribution):
            leaves, treedef = jax.tree.flatten(data)
            # the static structure, without object addresses (they differ between processes)
            h = hashlib.sha256(re.sub(r" at 0x[0-9a-fA-F]+", "", str(treedef)).encode())
            for leaf in leaves:
                a = np.ascontiguousarray(np.asarray(leaf))
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(a.tobytes())
            return {"type": type(data).__name__, "dim": int(data.dim), "sha256": h.hexdigest()}
        if isinstance(data, tuple):
            return {"type": "labelled", "x": arr(data[0]), "labels": arr(data[1])}
        return arr(data)

    def save(self, path: str | os.PathLike, state: TrainState, *, data: Any = None,
             max_to_keep: int | None = None) -> None:
        """Save ``state`` (params, EMA, optimizer state, step, key) as step ``state.step`` of the
        orbax checkpoint directory ``path``, with the metadata ``{"step", "trainer":
        self.config()}`` and, when ``data`` is given, ``"data": self.data_fingerprint(data)``.

        Args:
          path: checkpoint directory (see :mod:`~composition_jax.training.checkpoint`).
          state: the state to save.
          data: the training data, recorded by fingerprint so that :meth:`restore` can refuse
            to resume on other data.
          max_to_keep: keep only the newest ``max_to_keep`` steps in ``path``.
        """
        meta = {"step": int(state.step), "trainer": self.config()}
        if data is not None:
            meta["data"] = self.data_fingerprint(data)
        save_checkpoint(path, state, meta, step=int(state.step), max_to_keep=max_to_keep)

    def _check_config(self, path: str, meta: dict, strict: bool, data: dict | None) -> None:
        saved = meta.get("trainer")
        if not isinstance(saved, dict):
            raise CheckpointError(
                f"{path} holds no trainer configuration (not written by DSMTrainer.save); load it "
                f"with load_checkpoint"
            )
        mine = dict(self.config())
        keys = _MODEL_KEYS + (_TRAINING_KEYS if strict else ())
        if data is not None:
            if "data" not in meta:
                raise CheckpointError(f"{path}: the checkpoint records no training data (saved "
                                      f"without data=); restore it without data=")
            saved, mine, keys = {**saved, "data": meta["data"]}, {**mine, "data": data}, \
                keys + ("data",)
        missing = [k for k in keys if k not in saved]
        if missing:
            raise CheckpointError(f"{path}: the checkpoint's trainer configuration has no "
                                  f"{missing[0]!r}")
        differ = [k for k in keys if not _same(saved[k], mine[k])]
        if differ:
            lines = "; ".join(f"checkpoint {k} {_fmt(saved[k])} != trainer's {_fmt(mine[k])}"
                              for k in differ)
            hint = ("" if all(k in _MODEL_KEYS for k in differ) else
                    " (training settings and data: restore(..., strict=False) without data= "
                    "resumes with them changed, no longer bit-identical to an uninterrupted run)")
            raise CheckpointError(
                f"{path}: the checkpoint does not match this trainer in "
                f"{', '.join(differ)}: {lines}{hint}"
            )

    def restore(self, path: str | os.PathLike, *, strict: bool = True, data: Any = None,
                step: int | None = None) -> TrainState:
        """Load a state saved by :meth:`save` for this configuration.

        Checks, after the integrity record (see :mod:`~composition_jax.training.checkpoint`): the
        schedule (type and parameters), the parameterization, the network configuration and the
        parameter dtype; with ``strict`` also the training settings (weighting, time sampling,
        time range, batch size, EMA, ``p_uncond``), since exact resumption needs them; with
        ``data`` the fingerprint of the training data; then every leaf's key path, shape and
        dtype (architecture and optimizer state), then the arrays against their SHA-256. Numbers
        are compared to float32 rounding. Optimizer hyperparameters (learning rate, ...) are not
        recorded. Single-file checkpoints of the previous format are read too.

        Args:
          path: checkpoint directory (or previous-format file).
          strict: also check the training settings.
          data: the data training will resume on; refused if it is not the recorded data.
          step: the step to load (default: the latest).

        Raises:
          CheckpointError: corrupt, edited or old-format checkpoint, or a configuration that
            differs (every differing field is named: ``checkpoint schedule VPSchedule(...) !=
            trainer's VESchedule(...)``), or another structure (the first differing leaf:
            ``leaf params/params/Dense_0/kernel: shape (2, 64) in file, (4, 64) expected``).
        """
        name = os.fspath(path)
        fp = None if data is None else self.data_fingerprint(data)
        target = jax.eval_shape(self.init, jax.random.key(0))
        state, _ = load_checkpoint(
            path, target, step=step,
            check_metadata=lambda meta: self._check_config(name, meta, strict, fp))
        return state


def throughput(trainer: DSMTrainer, state: TrainState, data: Any, num_steps: int) -> dict:
    """Measure steady-state training throughput (examples/s): one warm-up call (compile) then
    ``num_steps`` timed steps; returns ``{"examples_per_s", "steps_per_s", "compile_s"}``."""
    data = trainer._check_data(data)
    k = trainer.steps_per_call
    t0 = time.perf_counter()
    state, ls = trainer._chunk(state, data, jnp.int32(k))
    jax.block_until_ready(ls)
    compile_s = time.perf_counter() - t0
    calls = max(1, math.ceil(num_steps / k))
    t0 = time.perf_counter()
    for _ in range(calls):
        state, ls = trainer._chunk(state, data, jnp.int32(k))
    jax.block_until_ready(ls)
    dt = time.perf_counter() - t0
    steps = calls * k
    return {
        "examples_per_s": steps * trainer.batch_size / dt,
        "steps_per_s": steps / dt,
        "compile_s": compile_s,
        "steps": steps,
        "batch_size": trainer.batch_size,
    }


__all__ += ["throughput"]
