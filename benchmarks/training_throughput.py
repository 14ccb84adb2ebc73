"""Training throughput of the flax score networks (examples/s), denoising score matching with
optax, fused steps per call: ``python benchmarks/training_throughput.py [--quick]``.

Prints one JSON line per configuration (network, width, batch) with examples/s, steps/s and
compile time, plus the machine and versions. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import platform

import jax
import jax.numpy as jnp
import optax

import composition_jax as cj


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    nn, training = cj.nn, cj.training
    ring = cj.GaussianMixture(
        jnp.full((8,), 1 / 8),
        jnp.stack([2 * jnp.array([jnp.cos(a), jnp.sin(a)]) for a in jnp.arange(8) * jnp.pi / 4]),
        jnp.stack([0.05 * jnp.eye(2)] * 8),
    )
    data = ring.sample(jax.random.key(0), 4096)
    configs = [dict(hidden=64, depth=2, batch=256)]
    if not args.quick:
        configs += [dict(hidden=128, depth=3, batch=512), dict(hidden=256, depth=3, batch=256)]
    print(json.dumps({"machine": platform.processor() or platform.machine(),
                      "devices": [str(d) for d in jax.devices()], "jax": jax.__version__}))
    for c in configs:
        net = nn.MLPScoreNet(dim=2, hidden=c["hidden"], depth=c["depth"])
        tr = training.DSMTrainer(net, cj.VPSchedule(), optimizer=optax.adam(1e-3),
                                 batch_size=c["batch"], steps_per_call=50)
        res = training.throughput(tr, tr.init(jax.random.key(1)), data, 100 if args.quick else 500)
        print(json.dumps({"network": "MLPScoreNet", **c, **res}))


if __name__ == "__main__":
    main()
