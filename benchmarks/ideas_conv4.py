"""Measure two meta-step speed ideas on Conv4 (issue 6): torch.compile of the network and grouped convolutions.

Both are measured on plain functional code, outside the library, to decide whether they are worth building in:

- ``compile``: one first-order MAML meta-step over ``--tasks`` tasks (5-way 1-shot, 15 queries), the network
  function eager vs ``torch.compile`` (inductor); and whether second order (double backward through the compiled
  graph) runs at all.
- ``grouped``: forward + backward of one conv layer for every task's query set with per-task weights, a loop over
  tasks vs one grouped convolution (``groups = tasks``, what vmap over convolutions lowers to).

    python benchmarks/ideas_conv4.py --tasks 32 --reps 5

Writes ``results/ideas_conv4.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch._functorch.config as functorch_config
import torch.nn.functional as F
from torch import Tensor

RESULTS = Path(__file__).resolve().parent / "results"


def init(channels: int, ways: int) -> list[Tensor]:
    """Conv4 parameters: per block conv weight [C, C_in, 3, 3], bias, BN weight, BN bias; then head [ways, C]."""
    params: list[Tensor] = []
    cin = 1
    for _ in range(4):
        params += [torch.randn(channels, cin, 3, 3) * 0.1, torch.zeros(channels), torch.ones(channels),
                   torch.zeros(channels)]
        cin = channels
    params += [torch.randn(ways, channels) * 0.1, torch.zeros(ways)]
    return [p.requires_grad_() for p in params]


def conv4(params: list[Tensor], x: Tensor) -> Tensor:
    """x: [N, 1, 28, 28] -> logits [N, ways]; conv-BN-pool-ReLU blocks, batch statistics."""
    for i in range(4):
        w, b, g, beta = params[4 * i:4 * i + 4]
        x = F.relu(F.max_pool2d(F.batch_norm(F.conv2d(x, w, b, padding=1), None, None, g, beta, training=True), 2))
    return F.linear(x.flatten(1), params[-2], params[-1])


def first_order_task(net: Callable, params: list[Tensor], task: tuple[Tensor, ...], lr: float = 0.4) -> list[Tensor]:
    """One inner step on the support set, then the query gradient at the adapted weights (first-order MAML)."""
    xs, ys, xq, yq = task
    grads = torch.autograd.grad(F.cross_entropy(net(params, xs), ys), params)
    fast = [(p - lr * g).detach().requires_grad_() for p, g in zip(params, grads)]
    return list(torch.autograd.grad(F.cross_entropy(net(fast, xq), yq), fast))


def second_order_runs(net: Callable, params: list[Tensor], task: tuple[Tensor, ...]) -> str:
    """'ok' if a second-order meta-gradient goes through ``net``, else the first line of the error."""
    xs, ys, xq, yq = task
    try:
        grads = torch.autograd.grad(F.cross_entropy(net(params, xs), ys), params, create_graph=True)
        fast = [p - 0.4 * g for p, g in zip(params, grads)]
        torch.autograd.grad(F.cross_entropy(net(fast, xq), yq), params)
        return "ok"
    except RuntimeError as err:
        return str(err).splitlines()[0][:200]


def median_ms(fn: Callable[[], object], reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def grouped_vs_loop(tasks: int, cin: int, cout: int, size: int, queries: int, reps: int) -> dict[str, float]:
    """One conv layer's forward + backward over every task's queries: loop over tasks vs one grouped conv."""
    w_grouped = torch.randn(tasks * cout, cin, 3, 3, requires_grad=True)
    x_grouped = torch.randn(queries, tasks * cin, size, size)
    w_loop = [torch.randn(cout, cin, 3, 3, requires_grad=True) for _ in range(tasks)]
    x_loop = torch.randn(tasks, queries, cin, size, size)

    def grouped() -> None:
        F.conv2d(x_grouped, w_grouped, padding=1, groups=tasks).sum().backward()

    def loop() -> None:
        total = sum(F.conv2d(x_loop[t], w_loop[t], padding=1).sum() for t in range(tasks))
        total.backward()

    return {"grouped_ms": median_ms(grouped, reps), "loop_ms": median_ms(loop, reps)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    ways, queries = 5, 15
    params = init(args.channels, ways)
    tasks = [(torch.randn(ways, 1, 28, 28), torch.arange(ways), torch.randn(ways * queries, 1, 28, 28),
              torch.arange(ways).repeat(queries)) for _ in range(args.tasks)]
    # donated buffers refuse create_graph outright; without them the real limitation shows (no double backward)
    functorch_config.donated_buffer = False
    compiled = torch.compile(conv4)

    def meta_step(net: Callable) -> Callable[[], None]:
        return lambda: [first_order_task(net, params, task) for task in tasks]

    eager_ms = median_ms(meta_step(conv4), args.reps)
    start = time.perf_counter()
    meta_step(compiled)()
    compile_s = time.perf_counter() - start
    compiled_ms = median_ms(meta_step(compiled), args.reps)
    out = {
        "tasks": args.tasks, "channels": args.channels, "threads": torch.get_num_threads(),
        "first_order_eager_ms": eager_ms, "first_order_compiled_ms": compiled_ms,
        "compile_speedup": eager_ms / compiled_ms, "compile_first_call_s": compile_s,
        "second_order_eager": second_order_runs(conv4, params, tasks[0]),
        "second_order_compiled": second_order_runs(compiled, params, tasks[0]),
        "grouped_layer1": grouped_vs_loop(args.tasks, 1, args.channels, 28, ways * queries, args.reps),
        "grouped_layer2": grouped_vs_loop(args.tasks, args.channels, args.channels, 14, ways * queries, args.reps),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "ideas_conv4.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
